"""ESSH / RetinaFace face detector (boxes + 5 landmarks) on MXNet; see :mod:`essh.detector`.

``ESSHDetector`` is imported on first use, so :mod:`essh.convert` and :mod:`essh.symbols` work before
the ``rcnn`` Cython extensions are built.
"""

__all__ = ["ESSHDetector"]


def __getattr__(name):
    if name == "ESSHDetector":
        from .detector import ESSHDetector
        return ESSHDetector
    raise AttributeError(f"module 'essh' has no attribute '{name}'")
