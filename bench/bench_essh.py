"""Benchmark of the ESSH detector: milliseconds per image and landmark NME on AFLW, printed as JSON.

    python -m bench.bench_essh [--model prefix,epoch] [--runs 5] [--nme-limit N]

Speed: median wall time of ``detect`` over ``--runs`` calls (after one warm-up) on test1.jpg and
oscar1.jpg at scale 1.0. NME: every 80x80 crop of ``data/aflw-5pt`` is padded by its own size on each
side, the face whose box centre is nearest the crop centre is taken, and the mean distance of its five
landmarks to the labels is divided by the labelled inter-ocular distance. Crops without a detection
count as misses and are left out of the NME.
"""
import argparse
import json
import os
import sys

import mxnet as mx

from agegender import config
from agegender.image import read_image
from bench.common import aflw_nme, median_ms
from essh import ESSHDetector

SPEED_IMAGES = ("test1.jpg", "oscar1.jpg")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=config.ESSH_DEFAULT_MODEL, help="detector checkpoint prefix,epoch")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per image")
    parser.add_argument("--nme-limit", type=int, default=None, help="use only the first N AFLW crops")
    args = parser.parse_args(argv)
    shared = config.shared_dir()
    if shared is None:
        sys.exit(f"shared data folder not found; set {config.SHARED_ENV}")
    detector = ESSHDetector(args.model, ctx=mx.cpu())
    report = {"model": args.model, "family": detector.family.name, "threads": os.environ.get("OMP_NUM_THREADS"),
              "ms_per_image": {}}
    for name in SPEED_IMAGES:
        image, _ = read_image(os.path.join(shared, "sample-images", name))
        report["ms_per_image"][name] = {"hw": list(image.shape[:2]),
                                        "ms": round(median_ms(lambda: detector.detect(image), args.runs), 1)}
    report["aflw_5pt"] = aflw_nme(detector.detect,
                                  os.path.join(shared, "data", "aflw-5pt"), args.nme_limit)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
