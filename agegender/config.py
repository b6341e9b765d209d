"""Defaults in one place: paths, network sizes, detector settings.

Every script reads its defaults from here so that a value is never written twice.
"""
import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Age/gender network
IMAGE_SIZE = (112, 112)          # (height, width) of an aligned face
AGE_CLASSES = 100                # ordinal "older than k" classifiers, k = 0..99
FC1_SIZE = 2 + 2 * AGE_CLASSES   # gender logits + one logit pair per age classifier
MAX_AGE = 100
UNKNOWN_GENDER = 9999            # label value ignored by the gender loss and metrics
OUTPUT_LAYER = "fc1_output"
DEFAULT_GPU = 0                  # --gpu of every script: used when the MXNet build sees it, else the CPU

# Fairness report of eval.py: UTKFace race codes 0..4 (the `race` column) and the age below which gender
# accuracy is reported apart (it is close to chance for babies in every model)
RACE_NAMES = ("white", "black", "asian", "indian", "others")
CHILD_AGE = 10

# The project's own shipped model (trained by train.py on UTKFace, see models/MODEL_CARD.md)
DEFAULT_MODEL = os.path.join(PROJECT_ROOT, "models", "agegender-m1") + ",0"

# MTCNN (the original's thresholds, pyramid factor and smallest face)
MTCNN_MODEL_DIR = os.path.join(PROJECT_ROOT, "models", "mtcnn")   # converted at set-up, not committed
MTCNN_THRESHOLDS = (0.6, 0.7, 0.8)
MTCNN_FACTOR = 0.709
MTCNN_MIN_FACE = 20

# How data.prepare finds the face of a labelled image (analysis.faces.PACK_POLICY)
PACK_PAD = 0.25                  # replicated border on each side, as a fraction of the image's longer side
AUTO_MIN_FACE = 0.25             # "auto" smallest face, as a fraction of the image's shorter side

# Test-time settings of a model without an inference sidecar (<prefix>-inference.json or ONNX metadata):
# the original's decoding, no mirror averaging, so the original checkpoint keeps its numbers.
INFERENCE_DEFAULTS = {"age_decoding": "votes", "flip": False}
INFERENCE_SUFFIX = "-inference.json"

# ESSH / RetinaFace family
ESSH_DEFAULT_MODEL = os.path.join(PROJECT_ROOT, "models", "retinaface", "retinaface-mnet25") + ",0"
ESSH_ORIGINAL_MODEL = os.path.join(PROJECT_ROOT, "ssh-model", "essh") + ",0"
ESSH_THRESHOLD = 0.5
ESSH_NMS = 0.3
# Longer image side fed to ESSH/RetinaFace (larger images are shrunk first; None: full size). Chosen with
# bench/bench_essh_size.py (README, "Benchmarks"): from 1280 up the recall on every golden sample image
# equals the uncapped detector's, but the crowd photos' landmarks (and so ages) need 1920 to stay within
# tests/test_essh.py's agreement; 640 (insightface's det_size) is ~3x faster on test1.jpg.
ESSH_MAX_SIZE = 1920

# ONNX exports of the defaults for the onnxruntime backend (`python export.py --defaults`, never committed)
ONNX_MODEL_DIR = os.path.join(PROJECT_ROOT, "models", "onnx")
ONNX_DEFAULT_MODEL = os.path.join(ONNX_MODEL_DIR, "agegender-m1.onnx")
ONNX_MTCNN_MODEL_DIR = os.path.join(ONNX_MODEL_DIR, "mtcnn")
ONNX_ESSH_DEFAULT_MODEL = os.path.join(ONNX_MODEL_DIR, "retinaface-mnet25.onnx")

# Video face tracks (analysis/tracking.py): boxes of one face in successive processed frames overlap by
# at least this IoU; a face may be missed in up to TRACK_MAX_GAP processed frames and keep its track.
TRACK_IOU = 0.3
TRACK_MAX_GAP = 5

# Web service (serve.py): upload size, decoded pixels (larger sequential JPEGs are decoded at reduced size,
# other images refused), requests waiting beyond the busy workers, result pages kept for the upload page.
SERVE_MAX_BYTES = 20 * 1024 * 1024
SERVE_MAX_PIXELS = 40_000_000
SERVE_QUEUE = 64
SERVE_RESULT_PAGES = 16

# Sample image shipped with the project (see sample-images/README.md)
DEFAULT_IMAGE = os.path.join(PROJECT_ROOT, "sample-images", "astronaut.jpg")

# Where tests and tools find the shared data set / original checkpoints
SHARED_ENV = "AGEGENDER_SHARED"


def shared_dir():
    """Return the path of the shared data folder (``$AGEGENDER_SHARED`` or ``../shared``), or None."""
    path = os.environ.get(SHARED_ENV) or os.path.join(os.path.dirname(PROJECT_ROOT), "shared")
    return path if os.path.isdir(path) else None
