#!/usr/bin/env python
"""Export MXNet checkpoints to ONNX for the onnxruntime backend (``test.py --backend onnx``).

    python export.py --model models/agegender-m1,0 --out models/onnx/agegender-m1.onnx
    python export.py --mtcnn-model models/mtcnn --out-dir models/onnx/mtcnn          # det1.onnx .. det3(4).onnx
    python export.py --essh-model models/retinaface/retinaface-mnet25,0 --out models/onnx/retinaface-mnet25.onnx
    python export.py --defaults          # the shipped model (if trained) and both default detectors -> models/onnx/

The age/gender network is cut at fc1_output and takes any batch size; the detectors take any batch and
image size (RNet/ONet/LNet: any batch). Each file is checked against MXNet on a random input.
"""
import argparse
import os
import sys

import numpy as np

from agegender import config
from agegender.align import parse_face_size
from agegender.checkpoint import checkpoint_paths, parse_model_spec
from agegender.errors import AgeGenderError, CheckpointError, UsageParser
from agegender.cli import EXIT_OK, add_image_size_option, run_main
from agegender.files import check_output_path, is_special_file, same_file

CHECK_TOLERANCE = 1e-3   # max |onnxruntime - MXNet| on a random input, relative to the largest output


def build_parser():
    parser = UsageParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="age/gender checkpoint 'prefix,epoch' (write it to --out)")
    parser.add_argument("--mtcnn-model", help="folder of MTCNN det1..det3 (+det4) checkpoints (write to --out-dir)")
    parser.add_argument("--essh-model", help="ESSH/RetinaFace checkpoint 'prefix,epoch' (write it to --out)")
    parser.add_argument("--out", help="ONNX file for --model or --essh-model")
    parser.add_argument("--out-dir", help="folder for the MTCNN files")
    add_image_size_option(parser, help="age/gender input 'height,width'")
    parser.add_argument("--defaults", action="store_true",
                        help=f"export the shipped model (when it exists) and the default detectors to "
                             f"{os.path.relpath(config.ONNX_MODEL_DIR, config.PROJECT_ROOT)}/")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with MXNet")
    return parser


def jobs_from_args(args, parser):
    """The exports asked for, as ``(kind, source, destination)``."""
    if args.defaults:
        if args.model or args.mtcnn_model or args.essh_model or args.out or args.out_dir:
            parser.error("--defaults takes no other model or output option")
        jobs = []
        prefix, epoch = parse_model_spec(config.DEFAULT_MODEL)
        if os.path.exists(checkpoint_paths(prefix, epoch)[1]):
            jobs.append(("agegender", config.DEFAULT_MODEL, config.ONNX_DEFAULT_MODEL))
        else:
            print(f"skipping the shipped model: {checkpoint_paths(prefix, epoch)[1]} not found", file=sys.stderr)
        jobs.append(("mtcnn", config.MTCNN_MODEL_DIR, config.ONNX_MTCNN_MODEL_DIR))
        jobs.append(("essh", config.ESSH_DEFAULT_MODEL, config.ONNX_ESSH_DEFAULT_MODEL))
        return jobs
    singles = [(kind, source) for kind, source in (("agegender", args.model), ("essh", args.essh_model)) if source]
    if len(singles) > 1:
        parser.error("give --model or --essh-model, not both (one --out file each)")
    if singles and not args.out:
        parser.error("--model / --essh-model need --out FILE.onnx")
    if args.mtcnn_model and not args.out_dir:
        parser.error("--mtcnn-model needs --out-dir DIR")
    jobs = [(kind, source, args.out) for kind, source in singles]
    if args.mtcnn_model:
        jobs.append(("mtcnn", args.mtcnn_model, args.out_dir))
    if not jobs:
        parser.error("nothing to export: give --model, --mtcnn-model, --essh-model or --defaults")
    return jobs


def mxnet_references(kind, source, image_size):
    """``(MXNet forward, random input)`` for each network of one export job, in the order they are written."""
    rng = np.random.default_rng(0)
    if kind == "agegender":
        from agegender.model import AgeGenderModel
        return [(AgeGenderModel(source, image_size=image_size).runner.run, rng.uniform(0, 255, (2, 3) + image_size))]
    if kind == "essh":
        from essh.detector import ESSHDetector
        return [(ESSHDetector(source).forward, rng.uniform(-120, 130, (1, 3, 160, 224)))]
    from mtcnn.detector import MtcnnDetector
    detector = MtcnnDetector(source)
    networks = [(detector.pnet, (1, 3, 45, 61)), (detector.rnet, (3, 3, 24, 24)), (detector.onet, (3, 3, 48, 48))]
    if detector.lnet is not None:
        networks.append((detector.lnet, (3, 15, 24, 24)))
    return [(network.run, rng.uniform(-1, 1, shape)) for network, shape in networks]


def check_against_mxnet(kind, source, paths, image_size):
    """Largest difference between onnxruntime and MXNet on random inputs, relative to the output scale
    (infinite when either gives a non-finite value)."""
    from agegender.backends import OnnxRunner
    worst = 0.0
    for path, (mxnet_run, batch) in zip(paths, mxnet_references(kind, source, image_size)):
        batch = batch.astype(np.float32)
        for expected, got in zip(mxnet_run(batch), OnnxRunner(path).run(batch)):
            if not (np.isfinite(expected).all() and np.isfinite(got).all()):
                return float("inf")                     # NaN or infinity: no comparison can pass
            scale = max(1.0, float(np.abs(expected).max()))
            worst = max(worst, float(np.abs(expected - got).max()) / scale)
    return worst


def check_destinations(jobs, parser, check):
    """Usage errors for outputs that are folders (or inside a file), that would overwrite a source file, or
    that are FIFOs/devices when the export is to be read back (``check``)."""
    for kind, source, destination in jobs:
        if kind == "mtcnn":
            if os.path.exists(destination) and not os.path.isdir(destination):
                parser.error(f"--out-dir {destination}: is a file, not a folder")
            continue
        if check and is_special_file(destination):
            parser.error(f"--out {destination}: is a FIFO or a device; the export is read back to be checked, "
                         f"so write it to a file (or give --no-check)")
        try:
            check_output_path(destination, "--out ONNX file")
        except AgeGenderError as exc:
            parser.error(str(exc))
        prefix, epoch = parse_model_spec(source)
        for path in checkpoint_paths(prefix, epoch):
            if same_file(path, destination):
                parser.error(f"--out {destination}: is the checkpoint being exported ({path}); choose another file")


def main(argv=None):
    return run_main(lambda: _main(argv))


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        jobs = jobs_from_args(args, parser)
        height, width = parse_face_size(args.image_size)
    except (ValueError, CheckpointError) as exc:
        parser.error(str(exc))
    check_destinations(jobs, parser, not args.no_check)
    for kind, source, destination in jobs:
        if kind == "agegender":
            from agegender.onnx_export import export_agegender
            paths = [export_agegender(source, destination, (height, width))]
        elif kind == "essh":
            from essh.export import export_essh
            paths = [export_essh(source, destination)]
        else:
            from mtcnn.export import export_mtcnn
            paths = export_mtcnn(source, destination)
        note = ""
        if not args.no_check:
            difference = check_against_mxnet(kind, source, paths, (height, width))
            if not difference <= CHECK_TOLERANCE:       # NaN included
                raise AgeGenderError(f"{paths[0]}: onnxruntime differs from MXNet by {difference:.2e} "
                                     f"(relative); the export is wrong")
            note = f" (max relative difference to MXNet {difference:.1e})"
        for path in paths:
            print(f"wrote {path}{note}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
