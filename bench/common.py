"""Measurements shared by the benchmark scripts."""
import csv
import os
import time

import cv2
import numpy as np

from agegender.image import read_image

AFLW_POINTS = ("le", "re", "nose", "ml", "mr")


def median_ms(call, runs, warmup=1):
    """Median milliseconds of ``call()`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def aflw_nme(detect, aflw_dir, limit=None):
    """Landmark NME of ``detect(image) -> (boxes, landmarks)`` on the AFLW 5-point crops.

    Each crop is padded by its own size on every side (so the whole face is visible to the detector),
    the detected face nearest the centre is taken, and the mean point error is divided by the
    inter-ocular distance. Returns mean, median, detected crops and crops.
    """
    with open(os.path.join(aflw_dir, "landmarks5.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    errors = []
    for row in rows:
        image, _ = read_image(os.path.join(aflw_dir, row["path"]))
        height, width = image.shape[:2]
        padded = cv2.copyMakeBorder(image, height, height, width, width, cv2.BORDER_CONSTANT, value=0)
        boxes, landmarks = detect(padded)
        if len(boxes) == 0:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
        nearest = np.argmin(np.hypot(centres[:, 0] - 1.5 * width, centres[:, 1] - 1.5 * height))
        points = landmarks[nearest] - [width, height]
        truth = np.array([[float(row[f"{p}_x"]), float(row[f"{p}_y"])] for p in AFLW_POINTS])
        errors.append(np.hypot(*(points - truth).T).mean() / np.hypot(*(truth[0] - truth[1])))
    return {"nme_mean": round(float(np.mean(errors)), 4) if errors else None,
            "nme_median": round(float(np.median(errors)), 4) if errors else None,
            "detected": len(errors), "crops": len(rows), "normalised_by": "inter-ocular distance"}
