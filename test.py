#!/usr/bin/env python
"""Estimate age and gender of every face in images, folders, glob patterns or videos.

    python test.py                                   # the sample image, shipped model, MTCNN
    python test.py photos/ --json faces.json --output annotated/
    python test.py --det 1 --image group.jpg --output group_annotated.jpg
    python test.py --backend onnx photos/            # onnxruntime on models/onnx (python export.py --defaults)
    python test.py photos/ --jsonl faces.jsonl --resume --shard 3/16    # one part of a big collection
    python test.py clip.mp4 --output clip_annotated.mp4 --json tracks.json  # face tracks over a video
"""
import argparse
import os
import signal
import sys

from agegender import config
from agegender.cli import run_main
from agegender.errors import UsageError, UsageParser
from agegender.files import mute_stdout, print_error
from analysis.options import add_analyzer_options, analyzer_from_args, check_analyzer_options


def build_parser():
    parser = UsageParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files, folders (recursive), glob patterns or videos")
    parser.add_argument("--image", nargs="+", default=[], help="input image(s); same as positional inputs")
    add_analyzer_options(parser)
    parser.add_argument("--images-per-batch", type=int, default=8, help="images whose faces share a batch")
    parser.add_argument("--every", type=int, default=1, help="videos: process every N-th frame")
    parser.add_argument("--output", default=None, help="annotated picture (one input) or folder (several)")
    parser.add_argument("--json", default=None, help="write results as a JSON array ('-' = stdout)")
    parser.add_argument("--csv", default=None, help="write one CSV row per face ('-' = stdout)")
    parser.add_argument("--jsonl", default=None,
                        help="stream one JSON object per image (per video frame, then a track summary) to this "
                             "JSON Lines file as each is done ('-' = stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="with --jsonl: skip inputs already finished in that file and append the others")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="process only part K of N (0 <= K < N) of the inputs, chosen by a stable hash of "
                             "each file's path below its input folder (e.g. a Slurm array or Kubernetes Job index)")
    parser.add_argument("--raw", action="store_true", help="add the 202 raw fc1 values per face to the JSON")
    parser.add_argument("--show", action="store_true", help="show each annotated picture in a window")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (otherwise shown on stderr when it is a terminal)")
    return parser


def parse_args(argv=None):
    """The options of ``argv``, checked (usage errors exit 2); returns ``(args, parser)``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.inputs = list(args.inputs) + list(args.image)
    if not args.inputs:
        args.inputs = [config.DEFAULT_IMAGE]
        if not (args.output or args.json or args.csv or args.jsonl or args.show):
            stem = os.path.splitext(os.path.basename(config.DEFAULT_IMAGE))[0]
            args.output = os.path.join("output", f"{stem}_annotated.jpg")
            args.json = os.path.join("output", f"{stem}.json")
    check_analyzer_options(parser, args)
    for name in ("images_per_batch", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.resume and (not args.jsonl or args.jsonl == "-"):
        parser.error("--resume needs --jsonl FILE (the file it resumes)")
    if args.resume and (args.json or args.csv):
        parser.error("--resume appends to --jsonl only; --json/--csv would hold just this run's part")
    if args.shard is not None:
        try:
            index, count = (int(v) for v in args.shard.split("/"))
        except ValueError:
            parser.error(f"--shard {args.shard}: expected 'K/N', e.g. 0/4")
        if count < 1 or not 0 <= index < count:
            parser.error(f"--shard {args.shard}: needs N >= 1 and 0 <= K < N")
        args.shard = (index, count)
    return args, parser


def main(argv=None):
    return run_main(lambda: _main_with_signals(argv))


def _main_with_signals(argv):
    from analysis.runner import Interrupted, StopSignals, exit_status_for
    with StopSignals(restore=False) as signals:
        try:
            return _main(argv, signals)
        except Interrupted as exc:      # a second signal before the run started (loading the models)
            print_error(f"error: interrupted by {signal.Signals(exc.signum).name}; nothing was written")
            return exit_status_for(exc.signum)
        finally:
            _flush_stdout()


def _main(argv, signals):
    from analysis.inputs import expand_inputs
    from analysis.runner import check_outputs, run
    args, parser = parse_args(argv)
    found = expand_inputs(args.inputs)
    try:
        check_outputs(args, found)
    except UsageError as exc:
        parser.error(str(exc))
    analyzer = analyzer_from_args(args)
    return run(analyzer, args, found, signals)


def _flush_stdout():
    """Flush stdout now, so a reader that went away (``| head -c1``) is one line, not a traceback at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        mute_stdout()
        print_error("error: standard output was closed by the reader (broken pipe)")
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
