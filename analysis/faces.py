"""Finding faces: detect, choose and align, with an explicit policy.

One service behind test.py (every face, as detected), data.prepare and eval.py's CSV path (the one face
nearest the centre of a padded image, :data:`PACK_POLICY`)::

    finder = FaceFinder(det=0)                              # every face, detector defaults
    finder = FaceFinder(det=1, backend="onnx", **PACK_POLICY)
    boxes, landmarks, crops = finder.find(image)            # crops: aligned BGR faces
"""
from typing import NamedTuple

import cv2
import numpy as np

from agegender import config
from agegender.align import align_face

from .detectors import create_detector

KEEP = ("all", "centre")

# How data.prepare (and eval.py, to match it) finds the face of a labelled image.
PACK_POLICY = {"pad": config.PACK_PAD, "keep": "centre", "min_face": "auto", "retry_min_face": config.MTCNN_MIN_FACE}


class FoundFaces(NamedTuple):
    boxes: np.ndarray       # (N, 5) x1, y1, x2, y2, score, in the coordinates of the image given
    landmarks: np.ndarray   # (N, 5, 2)
    crops: list             # N aligned BGR faces of ``image_size``


class FaceFinder:
    """Detect faces with a registered detector, keep some by policy and align them onto the template.

    Detector: ``det`` (a :data:`analysis.detectors.DETECTORS` number), ``det_model``, ``backend``, ``ctx``,
    ``threshold`` (None: the detector's defaults). Policy:

    * ``pad``: a replicated border of ``pad`` times the longer side is added on every side before
      detection and alignment (so faces cut by the image edge still align); 0 = none.
    * ``keep``: ``"all"`` faces in the detector's order, or ``"centre"``: only the face whose box centre
      is nearest the image centre.
    * ``min_face``: the smallest face in pixels (None: the detector's default), or ``"auto"``:
      ``config.AUTO_MIN_FACE`` times the image's shorter side, at least ``config.MTCNN_MIN_FACE``.
    * ``retry_min_face``: when nothing is found, search once more with this smallest face (None: no retry).
    """

    def __init__(self, det=0, det_model=None, backend="mxnet", ctx=None, threshold=None, min_face=None,
                 pad=0.0, keep="all", retry_min_face=None, image_size=config.IMAGE_SIZE):
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {', '.join(KEEP)}, not {keep!r}")
        if not (min_face is None or min_face == "auto" or (isinstance(min_face, int) and min_face > 0)):
            raise ValueError(f"min_face must be None, 'auto' or a positive number of pixels, not {min_face!r}")
        self.pad, self.keep, self.min_face, self.retry_min_face = pad, keep, min_face, retry_min_face
        self.image_size = tuple(image_size)
        self.detector = create_detector(det, det_model, ctx, backend, threshold,
                                        min_face if isinstance(min_face, int) else None)
        self._default_min_face = self.detector.min_face

    def _min_faces(self, image):
        """The smallest face of each search, in order."""
        if self.min_face == "auto":
            height, width = image.shape[:2]
            first = max(config.MTCNN_MIN_FACE, int(config.AUTO_MIN_FACE * min(height, width)))
        else:
            first = self._default_min_face if self.min_face is None else self.min_face
        return list(dict.fromkeys((first, self.retry_min_face) if self.retry_min_face else (first,)))

    def find(self, image):
        """Faces of one BGR image by the policy: ``FoundFaces(boxes, landmarks, crops)``."""
        height, width = image.shape[:2]
        border = int(round(self.pad * max(height, width)))
        searched = image if border == 0 else cv2.copyMakeBorder(image, border, border, border, border,
                                                                cv2.BORDER_REPLICATE)
        for min_face in self._min_faces(image):
            self.detector.min_face = min_face
            boxes, landmarks = self.detector.detect(searched)
            if len(boxes):
                break
        if self.keep == "centre" and len(boxes):
            centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
            target = np.array([searched.shape[1], searched.shape[0]]) / 2
            best = int(np.argmin(np.linalg.norm(centres - target, axis=1)))
            boxes, landmarks = boxes[best:best + 1], landmarks[best:best + 1]
        crops = [align_face(searched, points, self.image_size) for points in landmarks]
        if border:
            boxes = np.concatenate([boxes[:, :4] - border, boxes[:, 4:]], axis=1)
            landmarks = landmarks - border
        return FoundFaces(boxes, landmarks, crops)
