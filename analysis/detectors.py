"""The face detectors behind ``--det``: a number maps to a detector package, one line each.

Every detector package has ``create(model=None, ctx=None, backend="mxnet", threshold=None, min_face=None)``
(None: the package's default on that backend). The detector it returns keeps these settings and has

* ``detect(bgr) -> (boxes, landmarks)``: boxes (N, 5) float64 ``[x1, y1, x2, y2, score]``, landmarks
  (N, 5, 2) float64 (left eye, right eye, nose, left and right mouth corner, image-left first);
  no face (or an empty image) gives shapes (0, 5) and (0, 5, 2); grey, BGRA and 16-bit images are
  converted, other arrays raise :class:`agegender.errors.ImageError`;
* ``min_face``: the smallest face kept, in pixels, which may be changed between calls.

A new detector is one package with ``create`` and one line in :data:`DETECTORS`.
"""
import importlib
from typing import NamedTuple

from agegender.errors import AgeGenderError


class DetectorEntry(NamedTuple):
    package: str      # importable package with ``create``; also names the ``--<package>-model`` option
    label: str
    model_help: str   # what ``model`` is, for the command-line help


DETECTORS = {
    0: DetectorEntry("mtcnn", "MTCNN", "folder with MTCNN det1..det3 (+det4) checkpoints (onnx: detN.onnx files)"),
    1: DetectorEntry("essh", "ESSH/RetinaFace", "ESSH/RetinaFace checkpoint 'prefix,epoch' (onnx: an .onnx file)"),
}


def describe_detectors():
    """``"0 = MTCNN, 1 = ESSH/RetinaFace"``, for help texts and errors."""
    return ", ".join(f"{det} = {entry.label}" for det, entry in DETECTORS.items())


def detector_entry(det):
    """The registry entry of ``--det det``; AgeGenderError for an unknown number."""
    if det not in DETECTORS:
        raise AgeGenderError(f"--det {det}: unknown detector ({describe_detectors()})")
    return DETECTORS[det]


def create_detector(det=0, model=None, ctx=None, backend="mxnet", threshold=None, min_face=None):
    """Build the detector registered as ``det`` with the given settings (see the module docstring)."""
    package = importlib.import_module(detector_entry(det).package)
    return package.create(model=model, ctx=ctx, backend=backend, threshold=threshold, min_face=min_face)
