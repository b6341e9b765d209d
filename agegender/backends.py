"""Network runners: one small interface over MXNet executors and onnxruntime sessions.

A runner takes one float32 input array and returns the network's outputs as NumPy arrays::

    runner = OnnxRunner("models/onnx/agegender-m1.onnx")
    fc1, = runner.run(batch)

:class:`MXNetRunner` binds an executor per input shape (``fixed_shapes = True``: callers that see many
sizes may pad to a few); :class:`OnnxRunner` takes any size its graph allows. Neither module-level
import pulls in MXNet, so the onnxruntime path runs without it.
"""
import os
from collections import OrderedDict

import numpy as np

from .errors import CheckpointError

BACKENDS = ("mxnet", "onnx")


def check_backend(backend):
    """Return ``backend`` if it is a known backend name, else raise ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    return backend


class MXNetRunner:
    """An MXNet symbol with its parameters on ``ctx``; executors cached by input shape.

    The cache keeps the ``max_executors`` most recently used shapes, and, with ``max_cached_values``,
    drops the least recently used until the cached inputs hold at most that many values (one always stays).
    With ``shared_shape``, one executor is bound for that input shape and every input no larger than it
    gets a reshaped executor sharing its memory (MXNet's ``Executor.reshape``), so that many shapes cost
    the memory of one; larger inputs bind their own.
    """

    fixed_shapes = True

    def __init__(self, symbol, params, ctx=None, input_name="data", max_executors=None, max_cached_values=None,
                 shared_shape=None):
        import mxnet as mx
        self.symbol = symbol
        self.ctx = ctx or mx.cpu()
        self.input_name = input_name
        names = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
        self.params = {k: v.as_in_context(self.ctx) for k, v in params.items() if k in names}
        self.max_executors = max_executors
        self.max_cached_values = max_cached_values
        self._executors = OrderedDict()
        self._shared = self._bind(tuple(shared_shape)) if shared_shape else None

    def _bind(self, shape):
        import mxnet as mx
        args = {n: (mx.nd.zeros(shape, self.ctx) if n == self.input_name else self.params[n])
                for n in self.symbol.list_arguments()}
        aux = {n: self.params[n] for n in self.symbol.list_auxiliary_states()}
        return self.symbol.bind(self.ctx, args, grad_req="null", aux_states=aux)

    def _executor(self, shape):
        import mxnet as mx
        exe = self._executors.get(shape)
        if exe is not None:
            self._executors.move_to_end(shape)
            return exe
        exe = None
        if self._shared is not None and int(np.prod(shape)) <= self._shared.arg_dict[self.input_name].size:
            try:
                exe = self._shared.reshape(allow_up_sizing=False, **{self.input_name: shape})
            except mx.base.MXNetError:   # some internal array would outgrow the shared one
                exe = None
        exe = exe or self._bind(shape)
        self._executors[shape] = exe
        while len(self._executors) > 1 and (
                (self.max_executors is not None and len(self._executors) > self.max_executors)
                or (self.max_cached_values is not None
                    and sum(int(np.prod(s)) for s in self._executors) > self.max_cached_values)):
            self._executors.popitem(last=False)
        return exe

    def run(self, batch):
        """Forward one float32 array; returns every output as a NumPy array."""
        batch = np.asarray(batch, dtype=np.float32)
        exe = self._executor(tuple(batch.shape))
        exe.arg_dict[self.input_name][:] = batch
        exe.forward(is_train=False)
        return [out.asnumpy() for out in exe.outputs]


def onnx_threads():
    """Threads for onnxruntime sessions: ``OMP_NUM_THREADS`` when set (as MXNet reads it), else 0 = all cores."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


class OnnxRunner:
    """An onnxruntime CPU session on an ONNX file; ``threads`` None follows :func:`onnx_threads`.

    ``metadata`` holds the file's metadata_props (e.g. what :mod:`export` wrote: kind, family).
    """

    fixed_shapes = False

    def __init__(self, path, threads=None):
        import onnxruntime as ort
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: ONNX model not found (export it with export.py or `make models`)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = onnx_threads() if threads is None else int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.path = path
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{path}: expected one input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch):
        """Forward one float32 array; returns every output as a NumPy array."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
