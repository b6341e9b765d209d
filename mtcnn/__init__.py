"""MTCNN face detector with five landmarks (P/R/O-Net cascade, optional LNet), on MXNet or onnxruntime."""
from agegender import config
from agegender.backends import check_backend

from .detector import MtcnnDetector

__all__ = ["MtcnnDetector", "create"]


def create(model=None, ctx=None, backend="mxnet", threshold=None, min_face=None):
    """The ``--det 0`` detector: ``model`` a folder of networks (None: the converted default on ``backend``),
    ``threshold`` the last stage's (ONet), ``min_face`` the smallest face searched, in pixels."""
    thresholds = list(config.MTCNN_THRESHOLDS)
    if threshold is not None:
        thresholds[-1] = threshold
    default_dir = config.ONNX_MTCNN_MODEL_DIR if check_backend(backend) == "onnx" else config.MTCNN_MODEL_DIR
    return MtcnnDetector(model_dir=model or default_dir, ctx=ctx, backend=backend,
                         min_face=min_face or config.MTCNN_MIN_FACE, thresholds=tuple(thresholds))
