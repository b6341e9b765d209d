"""The per-image work of data.prepare, shared with eval.py: a labelled image in, its aligned face out.

Faces are found by :class:`analysis.faces.FaceFinder` with :data:`analysis.faces.PACK_POLICY` (the face
nearest the centre of the padded image) and JPEG-encoded as they are stored in packs.
"""
import cv2

from agegender import config
from agegender.errors import DataError, ImageError
from agegender.image import read_image
from analysis.faces import PACK_POLICY, FaceFinder

from .records import JPEG_QUALITY, PackReader, encode_face
from .sources import PACK_KEY_SEPARATOR

OK, SKIPPED = 0, 1


class FaceAligner:
    """Read an image (a file or ``pack.rec#key``), keep its one face and return it aligned and encoded.

    ``det``, ``det_model``, ``backend``: the detector (analysis.detectors); ``min_face`` and ``pad``
    override :data:`~analysis.faces.PACK_POLICY`'s; ``aligned=True`` only resizes to 112x112.
    """

    def __init__(self, det=0, det_model=None, backend="mxnet", min_face=PACK_POLICY["min_face"],
                 pad=PACK_POLICY["pad"], aligned=False):
        self.finder = None
        if not aligned:
            policy = dict(PACK_POLICY, min_face=min_face, pad=pad)
            self.finder = FaceFinder(det, det_model, backend, **policy)
        self._packs = {}

    def load(self, source):
        """BGR image of a file or of a pack record (``pack.rec#key``)."""
        pack, sep, key = source.rpartition(PACK_KEY_SEPARATOR)
        if sep and pack.endswith(".rec"):
            if pack not in self._packs:
                self._packs[pack] = PackReader(pack, check_labels=False)
            return self._packs[pack].read_image(int(key))[1]
        return read_image(source)[0]

    def __call__(self, source):
        """Return ``(OK, jpeg bytes)`` or ``(SKIPPED, reason)``."""
        try:
            image = self.load(source)
        except (ImageError, DataError) as exc:
            return SKIPPED, f"unreadable: {exc}"
        if self.finder is None:
            size = config.IMAGE_SIZE
            if image.shape[:2] != size:
                image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
            return OK, encode_face(image, JPEG_QUALITY)
        crops = self.finder.find(image).crops
        if not crops:
            return SKIPPED, "no face found"
        return OK, encode_face(crops[0], JPEG_QUALITY)
