"""The whole pipeline as a Python API: detect faces, align them, estimate age and gender.

Example::

    from analysis.pipeline import FaceAnalyzer
    from agegender.image import read_image

    analyzer = FaceAnalyzer()                      # shipped model, MTCNN, CPU (or GPU 0 if present)
    analyzer = FaceAnalyzer(backend="onnx")        # the same on onnxruntime (after `python export.py --defaults`)
    image, _ = read_image("sample-images/astronaut.jpg")
    for face in analyzer.analyze(image):
        print(face["bbox"], face["age"], face["gender"])
"""
import cv2

from agegender import config
from agegender.backends import check_backend
from agegender.errors import AgeGenderError
from agegender.model import AgeGenderModel, get_context

from .detectors import detector_entry
from .faces import FaceFinder


class FaceAnalyzer:
    """Load the age/gender model and a detector once; call :meth:`analyze` per image.

    ``backend="mxnet"``: ``model`` is ``"prefix,epoch"`` of an age/gender checkpoint (None: the shipped
    one). ``backend="onnx"``: every network is an ONNX file written by ``export.py`` and run by
    onnxruntime, without MXNet; ``model`` is the age/gender ``.onnx`` file (None: the export under
    ``models/onnx``). ``det`` is a :data:`analysis.detectors.DETECTORS` number (0 = MTCNN, 1 = ESSH) or
    ``None`` for aligned faces only; ``det_model``, ``threshold`` and ``min_face`` go to that detector
    (None: its defaults). ``gpu`` < 0 forces the CPU (a GPU is used only on MXNet, when it sees one);
    ``flip=True`` averages each face with its mirror image; ``age_decoding`` picks how ``age`` is read (see
    :class:`agegender.model.AgeGenderModel`; None for either: the model's own setting).
    """

    def __init__(self, model=None, det=0, gpu=-1, det_model=None, threshold=None, min_face=None,
                 image_size=config.IMAGE_SIZE, batch_size=64, backend="mxnet", flip=None, age_decoding=None):
        self.backend = check_backend(backend)
        self.ctx = get_context(gpu) if backend == "mxnet" else None
        self.image_size = tuple(image_size)
        if model is None:
            model = config.ONNX_DEFAULT_MODEL if backend == "onnx" else config.DEFAULT_MODEL
        self.model = AgeGenderModel(model, ctx=self.ctx, image_size=self.image_size, max_batch=batch_size,
                                    backend=backend, flip=flip, age_decoding=age_decoding)
        self.detector_name = "aligned" if det is None else detector_entry(det).package
        self.finder = None if det is None else FaceFinder(det, det_model, backend, self.ctx, threshold, min_face,
                                                          image_size=self.image_size)

    def analyze(self, image, raw=False):
        """Detect, align and estimate every face of one BGR image; returns a list of face dicts."""
        return self.analyze_many([image], raw=raw)[0]

    def analyze_many(self, images, raw=False, scales=None):
        """Analyze several images with one shared forward batch; returns one face list per image.

        ``scales`` (one per image, default 1) multiplies coordinates, for images decoded at reduced size.
        """
        if self.finder is None:
            raise AgeGenderError("this analyzer was built without a detector (det=None)")
        found = [self.finder.find(image) for image in images]
        estimates, fc1 = self.model.predict([crop for faces in found for crop in faces.crops])
        results, k = [], 0
        for i, (boxes, landmarks, _) in enumerate(found):
            scale = 1.0 if scales is None else float(scales[i])
            faces = []
            for box, points in zip(boxes, landmarks):
                face = {
                    "bbox": [round(float(v) * scale, 2) for v in box[:4]],
                    "score": round(float(box[4]), 6),
                    "landmarks": [[round(float(x) * scale, 2), round(float(y) * scale, 2)] for x, y in points],
                }
                face.update(estimates[k])
                if raw:
                    face["fc1"] = [float(v) for v in fc1[k]]
                faces.append(face)
                k += 1
            results.append(faces)
        return results

    def analyze_aligned(self, faces_bgr, raw=False):
        """Estimate age and gender for already aligned faces (resized to the network input if needed)."""
        height, width = self.image_size
        crops = [face if face.shape[:2] == (height, width) else cv2.resize(face, (width, height))
                 for face in faces_bgr]
        estimates, fc1 = self.model.predict(crops)
        results = []
        for k, estimate in enumerate(estimates):
            face = {"bbox": [0.0, 0.0, float(faces_bgr[k].shape[1]), float(faces_bgr[k].shape[0])],
                    "score": None, "landmarks": None}
            face.update(estimate)
            if raw:
                face["fc1"] = [float(v) for v in fc1[k]]
            results.append([face])
        return results

