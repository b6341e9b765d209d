"""MTCNN face detector with five landmarks, on MXNet (SPEC §6)."""
from .detector import MtcnnDetector

__all__ = ["MtcnnDetector"]
