"""The age/gender network at inference: load a checkpoint once, forward batches of aligned faces.

On the ``onnx`` backend the network is an exported ONNX file run by onnxruntime and MXNet is never imported.
"""
import cv2
import numpy as np

from . import config
from .backends import MXNetRunner, OnnxRunner, check_backend
from .checkpoint import checkpoint_paths, parse_model_spec
from .decode import decode_faces
from .errors import CheckpointError


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


class AgeGenderModel:
    """An age/gender network ready for inference.

    ``backend="mxnet"``: ``model`` is a checkpoint ``"prefix,epoch"``; the symbol is cut at ``fc1_output``
    (202 values per face) and bound once per batch size. ``backend="onnx"``: ``model`` is an ONNX file
    written by ``export.py`` (``ctx`` is ignored). Larger inputs are split into chunks of ``max_batch`` faces.
    ``flip=True`` averages each face's ``fc1`` with that of its mirror image (test-time augmentation: twice
    the network time, a better estimate; off by default, which gives the original's numbers).
    """

    def __init__(self, model=config.DEFAULT_MODEL, ctx=None, image_size=config.IMAGE_SIZE, max_batch=64,
                 backend="mxnet", flip=False):
        self.backend = check_backend(backend)
        self.flip = flip
        self.image_size = tuple(image_size)
        self.max_batch = max_batch
        if backend == "onnx":
            self.runner = OnnxRunner(model)
            self._check_onnx(model)
        else:
            self.prefix, self.epoch = parse_model_spec(model)
            self.runner = self._load_mxnet(ctx)

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

    def forward(self, batch):
        """Run N x 3 x H x W float32 RGB faces (0..255) through the net; returns N x 202 float32."""
        batch = np.asarray(batch, dtype=np.float32)
        outputs = [self.runner.run(batch[start:start + self.max_batch])[0]
                   for start in range(0, batch.shape[0], self.max_batch)]
        if not outputs:
            return np.zeros((0, config.FC1_SIZE), np.float32)
        return np.concatenate(outputs)

    def predict(self, faces_bgr):
        """Estimate age and gender for aligned BGR faces; returns ``(list of dicts, fc1 array)``."""
        if len(faces_bgr) == 0:
            return [], np.zeros((0, config.FC1_SIZE), np.float32)
        batch = faces_to_batch(faces_bgr)
        fc1 = self.forward(batch)
        if self.flip:
            fc1 = (fc1 + self.forward(batch[..., ::-1])) / 2
        return decode_faces(fc1), fc1
