"""Reading and writing MXNet ``prefix-symbol.json`` / ``prefix-%04d.params`` checkpoints.

Reads never execute anything from the files: the symbol is JSON and the params are MXNet's
NDArray container. Writes go to a temporary name and are renamed, so a crash or a full disk
never leaves a half-written checkpoint under the real name.
"""
import json
import os

from .errors import CheckpointError
from .files import atomic_write, quiet_native_stderr


def parse_model_spec(spec):
    """Split ``"prefix,epoch"`` into ``(prefix, epoch)``; a bare prefix means epoch 0."""
    prefix, _, epoch = str(spec).rpartition(",")
    if not prefix:
        return str(spec), 0
    try:
        return prefix, int(epoch)
    except ValueError:
        raise CheckpointError(f"{spec}: expected 'prefix,epoch' with an integer epoch") from None


def checkpoint_paths(prefix, epoch):
    """Return ``(symbol_path, params_path)`` of a checkpoint."""
    return f"{prefix}-symbol.json", f"{prefix}-{int(epoch):04d}.params"


def load_symbol(path):
    """Load a symbol JSON file (any MXNet version MXNet 1.9 can upgrade)."""
    import mxnet as mx   # imported on use: the onnxruntime path reads no checkpoint and needs no MXNet
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: symbol file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            json.load(f)
        with quiet_native_stderr():   # e.g. "Loading symbol saved by previous version"
            return mx.sym.load(path)
    except (ValueError, UnicodeDecodeError, mx.base.MXNetError) as exc:
        raise CheckpointError(f"{path}: not a valid MXNet symbol JSON ({first_line(exc)})") from None


def load_params(path, aux_renames=None):
    """Load a ``.params`` file into ``(arg_params, aux_params)`` dicts of NDArrays.

    ``aux_renames`` maps suffixes of auxiliary names, e.g. ``{"_running_mean": "_moving_mean"}``
    for checkpoints written by older insightface code.
    """
    import mxnet as mx
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: params file not found")
    try:
        saved = mx.nd.load(path)
    except mx.base.MXNetError as exc:
        raise CheckpointError(f"{path}: cannot be read, truncated or not an MXNet params file "
                              f"({first_line(exc)})") from None
    if not isinstance(saved, dict) or not saved:
        raise CheckpointError(f"{path}: holds no named arrays, not a checkpoint params file")
    arg_params, aux_params = {}, {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "arg":
            arg_params[name] = value
        elif kind == "aux":
            for old, new in (aux_renames or {}).items():
                if name.endswith(old):
                    name = name[: -len(old)] + new
            aux_params[name] = value
        else:
            raise CheckpointError(f"{path}: unexpected entry '{key}' (expected 'arg:' or 'aux:' names)")
    bad = first_non_finite({**arg_params, **aux_params})
    if bad:
        raise CheckpointError(f"{path}: parameter '{bad}' holds NaN or infinite values, not a usable model")
    return arg_params, aux_params


def first_non_finite(arrays):
    """Name of the first (sorted) NDArray of ``arrays`` holding a NaN or infinity, or None."""
    import numpy as np
    for name in sorted(arrays):
        value = arrays[name].asnumpy()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return name
    return None


def load_checkpoint(prefix, epoch, aux_renames=None):
    """Load ``(symbol, arg_params, aux_params)`` with one-line errors naming the failing file."""
    sym_path, params_path = checkpoint_paths(prefix, epoch)
    sym = load_symbol(sym_path)
    arg_params, aux_params = load_params(params_path, aux_renames)
    return sym, arg_params, aux_params


def check_params_match(sym, arg_params, aux_params, data_shapes, params_path, allow_missing=False):
    """Raise CheckpointError unless every parameter of ``sym`` is present with the right shape."""
    import mxnet as mx
    try:
        arg_shapes, _, aux_shapes = sym.infer_shape(**data_shapes)
    except mx.base.MXNetError as exc:
        raise CheckpointError(f"{params_path}: symbol cannot take input {data_shapes} "
                              f"({first_line(exc)})") from None
    inputs = set(data_shapes)
    expected = list(zip(sym.list_arguments(), arg_shapes)) + list(zip(sym.list_auxiliary_states(), aux_shapes))
    given = dict(arg_params)
    given.update(aux_params)
    for name, shape in expected:
        if name in inputs or name.endswith("_label"):
            continue
        if name not in given:
            if allow_missing:
                continue
            raise CheckpointError(f"{params_path}: does not match the network, parameter '{name}' is missing")
        if tuple(given[name].shape) != tuple(shape):
            raise CheckpointError(f"{params_path}: does not match the network, '{name}' has shape "
                                  f"{tuple(given[name].shape)} but the network needs {tuple(shape)}")


def save_checkpoint(prefix, epoch, sym, arg_params, aux_params):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` atomically (temporary file + rename).

    Parameters holding NaN or infinity are refused (CheckpointError): such a model gives no usable output.
    """
    import mxnet as mx
    sym_path, params_path = checkpoint_paths(prefix, epoch)
    folder = os.path.dirname(os.path.abspath(sym_path))
    os.makedirs(folder, exist_ok=True)
    arrays = {f"arg:{k}": v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    arrays.update({f"aux:{k}": v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    bad = first_non_finite(arrays)
    if bad:
        raise CheckpointError(f"{params_path}: not written, '{bad.partition(':')[2]}' holds NaN or infinite values "
                              f"(the training diverged: lower --lr or raise --warmup); the previous file is unchanged")
    _atomic_write(params_path, lambda tmp: mx.nd.save(tmp, arrays))
    _atomic_write(sym_path, lambda tmp: sym.save(tmp))
    return sym_path, params_path


def _atomic_write(path, write):
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``.

    A failed write (full disk, file size limit) raises CheckpointError and leaves ``path`` as it was;
    temporary files of ``path`` left by a writer that was killed are removed first. A FIFO or device
    at ``path`` is written in place, never replaced by a regular file.
    """
    import mxnet as mx
    atomic_write(path, write, errors=(OSError, mx.base.MXNetError), error_class=CheckpointError,
                 describe=lambda exc: exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc))


def first_line(exc):
    """The line of an error that says what went wrong (MXNet's C++ errors end with it, after a traceback)."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return type(exc).__name__
    return (text[-1] if text[0].startswith("Traceback") else text[0])[:200]
