"""Face age and gender estimation on MXNet: shared logic behind test.py, train.py and eval.py."""
from .errors import AgeGenderError, CheckpointError, ImageError

__all__ = ["AgeGenderError", "CheckpointError", "ImageError"]
