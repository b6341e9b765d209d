"""Face age and gender estimation on MXNet: shared logic behind test.py, train.py and eval.py."""
import os

# MXNet prints a line at every bind when its MKL-DNN subgraph backend is on; keep the console for results.
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

from .errors import AgeGenderError, CheckpointError, ImageError

__all__ = ["AgeGenderError", "CheckpointError", "ImageError"]
