"""Benchmark of the ESSH detector: milliseconds per image and landmark NME on AFLW, printed as JSON.

    python -m bench.bench_essh [--model prefix,epoch] [--runs 5] [--nme-limit N]

Speed: median wall time of ``detect`` over ``--runs`` calls (after one warm-up) on test1.jpg and
oscar1.jpg at scale 1.0. NME: every 80x80 crop of ``data/aflw-5pt`` is padded by its own size on each
side, the face whose box centre is nearest the crop centre is taken, and the mean distance of its five
landmarks to the labels is divided by the labelled inter-ocular distance. Crops without a detection
count as misses and are left out of the NME.
"""
import argparse
import csv
import json
import os
import sys
import time

import cv2
import mxnet as mx
import numpy as np

from agegender import config
from agegender.image import read_image
from essh import ESSHDetector

SPEED_IMAGES = ("test1.jpg", "oscar1.jpg")
AFLW_POINTS = ("le", "re", "nose", "ml", "mr")


def time_detection(detector, image, runs):
    """Median milliseconds of ``detector.detect(image)`` over ``runs`` calls after one warm-up."""
    detector.detect(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.detect(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def aflw_nme(detector, aflw_dir, limit=None, threshold=config.ESSH_THRESHOLD):
    """(NME mean, NME median, detected crops, crops) of the detector's landmarks on AFLW 5-point crops."""
    with open(os.path.join(aflw_dir, "landmarks5.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    errors = []
    for row in rows:
        img, _ = read_image(os.path.join(aflw_dir, row["path"]))
        height, width = img.shape[:2]
        padded = cv2.copyMakeBorder(img, height, height, width, width, cv2.BORDER_CONSTANT, value=0)
        boxes, landmarks = detector.detect(padded, threshold=threshold)
        if len(boxes) == 0:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
        nearest = np.argmin(np.hypot(centres[:, 0] - 1.5 * width, centres[:, 1] - 1.5 * height))
        points = landmarks[nearest] - [width, height]
        truth = np.array([[float(row[f"{p}_x"]), float(row[f"{p}_y"])] for p in AFLW_POINTS])
        inter_ocular = np.hypot(*(truth[0] - truth[1]))
        errors.append(np.hypot(*(points - truth).T).mean() / inter_ocular)
    return (float(np.mean(errors)) if errors else None, float(np.median(errors)) if errors else None,
            len(errors), len(rows))


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
                                        "ms": round(time_detection(detector, image, args.runs), 1)}
    nme_mean, nme_median, detected, total = aflw_nme(detector, os.path.join(shared, "data", "aflw-5pt"),
                                                     args.nme_limit)
    report["aflw_5pt"] = {"nme_mean": nme_mean and round(nme_mean, 4), "nme_median": nme_median and round(nme_median, 4),
                          "detected": detected, "crops": total, "normalised_by": "inter-ocular distance"}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
