"""ESSH / RetinaFace face detector (boxes + 5 landmarks) on MXNet or onnxruntime; see :mod:`essh.detector`.

``ESSHDetector`` is imported on first use, so :mod:`essh.convert` and :mod:`essh.symbols` work before
the ``rcnn`` Cython extensions are built.
"""
from agegender import config
from agegender.backends import check_backend

__all__ = ["ESSHDetector", "create"]


def create(model=None, ctx=None, backend="mxnet", threshold=None, min_face=None):
    """The ``--det 1`` detector: ``model`` a checkpoint ``"prefix,epoch"`` or, on onnx, a file (None: the
    converted default), ``threshold`` the score a face needs, ``min_face`` drops smaller boxes (pixels)."""
    from .detector import ESSHDetector
    onnx = check_backend(backend) == "onnx"
    default_model = config.ONNX_ESSH_DEFAULT_MODEL if onnx else config.ESSH_DEFAULT_MODEL
    return ESSHDetector(model=model or default_model, ctx=ctx, backend=backend, min_face=min_face,
                        threshold=config.ESSH_THRESHOLD if threshold is None else threshold)


def __getattr__(name):
    if name == "ESSHDetector":
        from .detector import ESSHDetector
        return ESSHDetector
    raise AttributeError(f"module 'essh' has no attribute '{name}'")
