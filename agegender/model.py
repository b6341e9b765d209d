"""The age/gender network at inference: load a checkpoint once, forward batches of aligned faces."""
from collections import OrderedDict

import cv2
import mxnet as mx
import numpy as np

from . import config
from .checkpoint import check_params_match, checkpoint_paths, load_checkpoint, parse_model_spec
from .decode import decode_faces
from .errors import CheckpointError


def get_context(gpu=-1):
    """``mx.gpu(gpu)`` when ``gpu >= 0`` and this MXNet build sees a GPU, else ``mx.cpu()``."""
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
    """An age/gender checkpoint bound for inference.

    ``model`` is ``"prefix,epoch"``; the symbol is cut at ``fc1_output`` (202 values per face).
    Executors are bound once per batch size and reused; larger inputs are split into chunks of
    ``max_batch`` faces.
    """

    def __init__(self, model=config.DEFAULT_MODEL, ctx=None, image_size=config.IMAGE_SIZE, max_batch=64):
        self.prefix, self.epoch = parse_model_spec(model)
        self.ctx = ctx or mx.cpu()
        self.image_size = tuple(image_size)
        self.max_batch = max_batch
        sym, arg_params, aux_params = load_checkpoint(self.prefix, self.epoch)
        params_path = checkpoint_paths(self.prefix, self.epoch)[1]
        internals = sym.get_internals()
        if config.OUTPUT_LAYER not in internals.list_outputs():
            raise CheckpointError(f"{checkpoint_paths(self.prefix, self.epoch)[0]}: has no '{config.OUTPUT_LAYER}' "
                                  f"layer, not an age/gender network")
        self.symbol = internals[config.OUTPUT_LAYER]
        data_shape = {"data": (1, 3) + self.image_size}
        check_params_match(self.symbol, arg_params, aux_params, data_shape, params_path)
        out_shape = self.symbol.infer_shape(**data_shape)[1][0]
        if out_shape[1] != config.FC1_SIZE:
            raise CheckpointError(f"{params_path}: network gives {out_shape[1]} outputs per face, "
                                  f"an age/gender network gives {config.FC1_SIZE}")
        names = set(self.symbol.list_arguments()) | set(self.symbol.list_auxiliary_states())
        self._params = {k: v.as_in_context(self.ctx) for k, v in list(arg_params.items()) + list(aux_params.items())
                        if k in names}
        self._executors = OrderedDict()

    def _executor(self, n):
        exe = self._executors.get(n)
        if exe is None:
            shape = (n, 3) + self.image_size
            args = {name: (mx.nd.zeros(shape, self.ctx) if name == "data" else self._params[name])
                    for name in self.symbol.list_arguments()}
            aux = {name: self._params[name] for name in self.symbol.list_auxiliary_states()}
            exe = self.symbol.bind(self.ctx, args, grad_req="null", aux_states=aux)
            self._executors[n] = exe
            if len(self._executors) > 8:
                self._executors.popitem(last=False)
        else:
            self._executors.move_to_end(n)
        return exe

    def forward(self, batch):
        """Run N x 3 x H x W float32 RGB faces (0..255) through the net; returns N x 202 float32."""
        batch = np.asarray(batch, dtype=np.float32)
        outputs = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start:start + self.max_batch]
            exe = self._executor(chunk.shape[0])
            exe.arg_dict["data"][:] = chunk
            exe.forward(is_train=False)
            outputs.append(exe.outputs[0].asnumpy())
        if not outputs:
            return np.zeros((0, config.FC1_SIZE), np.float32)
        return np.concatenate(outputs)

    def predict(self, faces_bgr):
        """Estimate age and gender for aligned BGR faces; returns ``(list of dicts, fc1 array)``."""
        if len(faces_bgr) == 0:
            return [], np.zeros((0, config.FC1_SIZE), np.float32)
        fc1 = self.forward(faces_to_batch(faces_bgr))
        return decode_faces(fc1), fc1
