"""The command-line options that choose the networks, shared by test.py and serve.py.

    add_analyzer_options(parser)
    args = parser.parse_args()
    check_analyzer_options(parser, args)      # usage errors (exit 2); parses --image-size
    analyzer = analyzer_from_args(args)
"""
import argparse

from agegender import config
from agegender.decode import AGE_DECODINGS
from agegender.align import parse_face_size
from agegender.cli import add_gpu_option, add_image_size_option

from .detectors import DETECTORS, describe_detectors


def add_analyzer_options(parser, aligned_help="inputs are already aligned 112x112 faces"):
    """Add --backend, --model, --gpu, --det, --<detector>-model, --image-size, --aligned, --flip, --age-decoding, --threshold,
    --min-face, --det-size and --batch-size to ``parser``."""
    parser.add_argument("--backend", default="mxnet", choices=["mxnet", "onnx"],
                        help="mxnet: checkpoints; onnx: onnxruntime on files written by export.py (no MXNet)")
    parser.add_argument("--model", default=None,
                        help="age/gender checkpoint 'prefix,epoch' (onnx: an .onnx file); default: the shipped "
                             "model (onnx: its export under models/onnx)")
    add_gpu_option(parser)
    parser.add_argument("--det", type=int, default=0, choices=sorted(DETECTORS), help=describe_detectors())
    add_image_size_option(parser)
    for entry in DETECTORS.values():
        parser.add_argument(f"--{entry.package}-model", default=None, help=entry.model_help)
    parser.add_argument("--aligned", action="store_true", help=aligned_help)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each face's estimate with its mirror image's (twice the network time; "
                             "default: the model's own setting)")
    parser.add_argument("--age-decoding", choices=AGE_DECODINGS, default=None,
                        help="how 'age' is read from the 100 classifiers: votes (the original's), expected "
                             "value, or their mean (default: the model's own setting)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="detector score threshold (MTCNN last stage, ESSH score)")
    parser.add_argument("--min-face", type=int, default=None,
                        help="smallest face in pixels (MTCNN: searched; ESSH: smaller boxes dropped)")
    parser.add_argument("--det-size", type=int, default=None,
                        help="ESSH/RetinaFace (--det 1): shrink images whose longer side exceeds this many pixels "
                             f"before detection (default {config.ESSH_MAX_SIZE}; 640 is fast, see README)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per forward batch")


def check_analyzer_options(parser, args):
    """Refuse bad values with ``parser.error`` (exit 2); turns ``args.image_size`` into ``(height, width)``."""
    try:
        args.image_size = parse_face_size(args.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.min_face is not None and args.min_face < 1:
        parser.error("--min-face must be at least 1")
    if args.det_size is not None and (args.det != 1 or args.aligned):
        parser.error("--det-size applies to --det 1 (ESSH/RetinaFace) only")
    if args.det_size is not None and args.det_size < 32:
        parser.error("--det-size must be at least 32")
    if args.threshold is not None and not 0 <= args.threshold <= 1:      # NaN included
        parser.error(f"--threshold {args.threshold}: must be a score between 0 and 1")


def analyzer_from_args(args):
    """The FaceAnalyzer the options describe (loads the networks)."""
    from .pipeline import FaceAnalyzer
    analyzer = FaceAnalyzer(model=args.model, det=None if args.aligned else args.det, gpu=args.gpu,
                            det_model=getattr(args, f"{DETECTORS[args.det].package}_model"),
                            threshold=args.threshold, min_face=args.min_face, image_size=args.image_size,
                            batch_size=args.batch_size, backend=args.backend, flip=args.flip,
                            age_decoding=args.age_decoding)
    if getattr(args, "det_size", None) is not None:
        analyzer.finder.detector.max_size = args.det_size     # ESSH's, checked by check_analyzer_options
    return analyzer
