"""The age/gender network at inference: load a checkpoint once, forward batches of aligned faces.

On the ``onnx`` backend the network is an exported ONNX file run by onnxruntime and MXNet is never imported.
"""
import os

import cv2
import numpy as np

from . import config
from .backends import MXNetRunner, OnnxRunner, check_backend
from .checkpoint import checkpoint_paths, parse_model_spec
from .decode import AGE_DECODINGS, decode_faces
from .errors import CheckpointError, ModelOutputError


def get_context(gpu=-1):
    """``mx.gpu(gpu)`` when ``gpu >= 0`` and this MXNet build sees a GPU, else ``mx.cpu()``."""
    import mxnet as mx
    if gpu is not None and gpu >= 0:
        try:
            if mx.context.num_gpus() > gpu:
                return mx.gpu(gpu)
        except mx.base.MXNetError:
            pass
    return mx.cpu()


def faces_to_batch(faces_bgr):
    """Stack aligned BGR uint8 faces (H x W x 3) into the network input: N x 3 x H x W float32 RGB."""
    batch = np.stack([cv2.cvtColor(face, cv2.COLOR_BGR2RGB) for face in faces_bgr])
    return batch.transpose(0, 3, 1, 2).astype(np.float32)


def read_inference_defaults(path, values):
    """Check the test-time settings ``values`` (a dict from ``path``) and complete them from the config."""
    defaults = dict(config.INFERENCE_DEFAULTS)
    unknown = sorted(set(values) - set(defaults) - {"chosen_on"})
    if unknown:
        raise CheckpointError(f"{path}: unknown inference settings {', '.join(unknown)}")
    defaults.update({k: v for k, v in values.items() if k in defaults})
    if defaults["age_decoding"] not in AGE_DECODINGS or not isinstance(defaults["flip"], bool):
        raise CheckpointError(f"{path}: age_decoding must be one of {', '.join(AGE_DECODINGS)} and flip "
                              f"true or false, not {defaults['age_decoding']!r} / {defaults['flip']!r}")
    return defaults


def inference_defaults(prefix):
    """The test-time settings shipped with checkpoint ``prefix`` (``<prefix>-inference.json``), else the config's."""
    import json
    path = prefix + config.INFERENCE_SUFFIX
    if not os.path.isfile(path):
        return dict(config.INFERENCE_DEFAULTS)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return read_inference_defaults(path, values)


class AgeGenderModel:
    """An age/gender network ready for inference.

    ``backend="mxnet"``: ``model`` is a checkpoint ``"prefix,epoch"``; the symbol is cut at ``fc1_output``
    (202 values per face) and bound once per batch size. ``backend="onnx"``: ``model`` is an ONNX file
    written by ``export.py`` (``ctx`` is ignored). Larger inputs are split into chunks of ``max_batch`` faces.
    ``flip=True`` averages each face's ``fc1`` with that of its mirror image (test-time augmentation: twice
    the network time, a better estimate); ``age_decoding`` picks how ``age`` is read from the classifiers
    (:func:`agegender.decode.decode_age_as`). ``None`` for either takes the model's own setting: its
    ``<prefix>-inference.json`` sidecar (or the ONNX file's metadata), else the original's (votes, no flip).
    """

    def __init__(self, model=config.DEFAULT_MODEL, ctx=None, image_size=config.IMAGE_SIZE, max_batch=64,
                 backend="mxnet", flip=None, age_decoding=None):
        self.backend = check_backend(backend)
        self.image_size = tuple(image_size)
        self.max_batch = max_batch
        if backend == "onnx":
            self.runner = OnnxRunner(model)
            self._check_onnx(model)
            meta = self.runner.metadata
            stored = {k: meta[k] for k in ("age_decoding", "flip") if k in meta}
            if "flip" in stored:
                stored["flip"] = stored["flip"] == "true"
            defaults = read_inference_defaults(model, stored)
        else:
            self.prefix, self.epoch = parse_model_spec(model)
            self.runner = self._load_mxnet(ctx)
            defaults = inference_defaults(self.prefix)
        self.flip = defaults["flip"] if flip is None else bool(flip)
        self.age_decoding = defaults["age_decoding"] if age_decoding is None else age_decoding
        if self.age_decoding not in AGE_DECODINGS:
            raise ValueError(f"unknown age decoding '{self.age_decoding}'; choose one of {', '.join(AGE_DECODINGS)}")

    def _load_mxnet(self, ctx):
        from .checkpoint import check_params_match, load_checkpoint
        sym, arg_params, aux_params = load_checkpoint(self.prefix, self.epoch)
        sym_path, params_path = checkpoint_paths(self.prefix, self.epoch)
        internals = sym.get_internals()
        if config.OUTPUT_LAYER not in internals.list_outputs():
            raise CheckpointError(f"{sym_path}: has no '{config.OUTPUT_LAYER}' layer, not an age/gender network")
        symbol = internals[config.OUTPUT_LAYER]
        data_shape = {"data": (1, 3) + self.image_size}
        check_params_match(symbol, arg_params, aux_params, data_shape, params_path)
        out_shape = symbol.infer_shape(**data_shape)[1][0]
        if out_shape[1] != config.FC1_SIZE:
            raise CheckpointError(f"{params_path}: network gives {out_shape[1]} outputs per face, "
                                  f"an age/gender network gives {config.FC1_SIZE}")
        return MXNetRunner(symbol, {**arg_params, **aux_params}, ctx, max_executors=8)

    def _check_onnx(self, path):
        """Refuse an ONNX file that is not an age/gender network for this face size."""
        shape = self.runner.input_shape
        if len(shape) != 4 or tuple(shape[2:]) != self.image_size:
            raise CheckpointError(f"{path}: input shape {shape} does not take {self.image_size} faces")
        probe = self.runner.run(np.zeros((1, 3) + self.image_size, np.float32))
        if len(probe) != 1 or probe[0].shape != (1, config.FC1_SIZE):
            raise CheckpointError(f"{path}: network gives outputs of shape {[p.shape for p in probe]}, "
                                  f"an age/gender network gives one (N, {config.FC1_SIZE})")
        if not np.isfinite(probe[0]).all():
            raise CheckpointError(f"{path}: network gives NaN or infinite outputs (NaN weights?), not a usable model")

    def forward(self, batch):
        """Run N x 3 x H x W float32 RGB faces (0..255) through the net; returns N x 202 float32."""
        batch = np.asarray(batch, dtype=np.float32)
        outputs = [self.runner.run(batch[start:start + self.max_batch])[0]
                   for start in range(0, batch.shape[0], self.max_batch)]
        if not outputs:
            return np.zeros((0, config.FC1_SIZE), np.float32)
        return np.concatenate(outputs)

    def predict(self, faces_bgr):
        """Estimate age and gender for aligned BGR faces; returns ``(list of dicts, fc1 array)``.

        ModelOutputError if the network gives a NaN or infinity for any face (never decoded into an estimate).
        """
        if len(faces_bgr) == 0:
            return [], np.zeros((0, config.FC1_SIZE), np.float32)
        batch = faces_to_batch(faces_bgr)
        fc1 = self.forward(batch)
        if self.flip:
            fc1 = (fc1 + self.forward(batch[..., ::-1])) / 2
        bad = ~np.isfinite(fc1).all(axis=1)
        if bad.any():
            raise ModelOutputError(f"the age/gender network gave NaN or infinite outputs for {int(bad.sum())} of "
                                   f"{len(fc1)} faces (face {int(np.argmax(bad))} first); no estimate")
        return decode_faces(fc1, self.age_decoding), fc1
