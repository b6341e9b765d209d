"""Benchmark of data.prepare and of the training iterator on UTKFace, printed as JSON.

    python -m bench.bench_prepare [--images 200] [--workers N] [--mtcnn-model DIR] [--min-face auto]

Preparation: ``--images`` train images of the shared UTKFace labels.csv (evenly spread) go through the
whole ``prepare`` run (detection, alignment, journal, packs) with ``--workers`` processes; reported as
aligned faces per second of wall time (worker start-up included) and the projected time of the full
18,960-image train split. Iterator: two epochs over the packed faces with the training augmentations.
"""
import argparse
import csv
import json
import os
import sys
import tempfile
import time

from agegender import config
from data.iterator import FaceImageIter
from data.prepare import prepare

UTKFACE_TRAIN = 18960


def write_subset_csv(labels_csv, count, path):
    """Write every n-th train row of ``labels_csv`` (absolute paths) to ``path``; returns the row count."""
    folder = os.path.dirname(os.path.abspath(labels_csv))
    with open(labels_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    rows = rows[::max(1, len(rows) // count)][:count]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "age", "gender", "split"))
        writer.writerows((os.path.join(folder, r["path"]), r["age"], r["gender"], "train") for r in rows)
    return len(rows)


def iterator_speed(rec_path, epochs=2, batch_size=128):
    """Images per second decoded and augmented (mirror + crop jitter + colour jitter) over ``epochs``."""
    it = FaceImageIter(rec_path, batch_size, shuffle=True, rand_mirror=True, rand_crop=0.1, color_jitter=1, seed=0)
    started, seen = time.time(), 0
    for _ in range(epochs):
        for batch in it:
            batch.data[0].wait_to_read()
            seen += batch_size - batch.pad
        it.reset()
    it.close()
    return seen / (time.time() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.bench_prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--mtcnn-model", default=config.MTCNN_MODEL_DIR)
    parser.add_argument("--min-face", default="auto")
    args = parser.parse_args(argv)
    shared = config.shared_dir()
    labels = os.path.join(shared or "", "data", "utkface", "labels.csv")
    if not os.path.isfile(labels):
        print(f"error: {labels} not found (set {config.SHARED_ENV})", file=sys.stderr)
        return 2
    min_face = args.min_face if args.min_face == "auto" else int(args.min_face)
    with tempfile.TemporaryDirectory(prefix="bench_prepare.") as tmp:
        count = write_subset_csv(labels, args.images, os.path.join(tmp, "subset.csv"))
        summary = prepare(os.path.join(tmp, "subset.csv"), os.path.join(tmp, "out"), workers=args.workers,
                          det_model=args.mtcnn_model, min_face=min_face, progress=False)
        records = summary["records"].get("train", 0)
        result = {
            "images": count, "workers": args.workers, "mtcnn_model": args.mtcnn_model, "min_face": args.min_face,
            "aligned": records, "skipped": summary["skipped"], "seconds": summary["seconds"],
            "faces_per_s": summary["faces_per_s"],
            "projected_utkface_train_min": round(UTKFACE_TRAIN / summary["faces_per_s"] / 60, 1)
            if summary["faces_per_s"] else None,
            "iterator_img_per_s": round(iterator_speed(os.path.join(tmp, "out", "train.rec")), 1) if records else None,
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
