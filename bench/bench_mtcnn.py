"""Benchmark of the MTCNN detector: speed against a slow reference mode, and landmark NME on AFLW; prints JSON.

    python -m bench.bench_mtcnn [--part speed|nme|all] [--runs 3] [--nme-limit N] [--output FILE]

Speed: min and median wall time of ``detect`` over ``--runs`` calls (after one warm-up) on test1.jpg
and oscar1.jpg with the original checkpoints, in subprocesses at one thread and at all threads
(OMP_NUM_THREADS = MXNET_CPU_WORKER_NTHREADS). Calls alternate with a reference slow mode that works
like the original code: a network bound anew for every forward call (every pyramid scale and stage),
the original layer widths, a zero canvas per crop, NMS over all remaining boxes at every step.
NME: every 80x80 crop of ``data/aflw-5pt`` is padded by its own size on each side, the face whose box
centre is nearest the crop centre is taken, and the mean distance of its five landmarks to the labels is
divided by the labelled inter-ocular distance (crops without a detection are counted as misses and left
out of the NME). Done for the original checkpoints (with LNet) and the converted defaults (without).
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np

from agegender import config
from agegender.checkpoint import load_checkpoint
from agegender.image import read_image
from bench.common import aflw_nme
from mtcnn import MtcnnDetector, detector as mtcnn_detector
from mtcnn.symbols import NETWORKS

SPEED_IMAGES = ("test1.jpg", "oscar1.jpg")
ORIGINAL_BATCH = 128   # the legacy FeedForward.predict batch size


class RebindingNetwork:
    """Like the original's FeedForward.predict: binds a fresh executor for every forward call."""

    def __init__(self, model_dir, name, ctx):
        build, _ = NETWORKS[name]
        self.symbol = build()
        _, arg_params, _ = load_checkpoint(os.path.join(model_dir, name), mtcnn_detector.EPOCH)
        self.params = {k: v.as_in_context(ctx) for k, v in arg_params.items()}
        self.ctx = ctx

    def run(self, batch):
        args = dict(self.params, data=mx.nd.array(batch, self.ctx))
        exe = self.symbol.bind(self.ctx, args, grad_req="null")
        exe.forward(is_train=False)
        return [out.asnumpy() for out in exe.outputs]

    def run_batched(self, batch):
        parts = [self.run(batch[i:i + ORIGINAL_BATCH]) for i in range(0, len(batch), ORIGINAL_BATCH)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]


def slow_crop_resized(image, boxes, size, dtype):
    """Per-box crops as the original makes them: always a zero canvas of the box size, then resize."""
    height, width = image.shape[:2]
    crops = np.empty((len(boxes), size, size, 3), dtype)
    for i, (x1, y1, x2, y2) in enumerate(boxes[:, 0:4].astype(np.int32)):
        canvas = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            canvas[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = image[sy1:sy2 + 1, sx1:sx2 + 1]
        crops[i] = cv2.resize(canvas, (size, size))
    return crops


def slow_nms(boxes, threshold, mode="union"):
    """The original's NMS: at every step, overlap of the best box with all remaining boxes."""
    x1, y1, x2, y2, scores = (boxes[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        best, rest = order[-1], order[:-1]
        keep.append(best)
        inter = (np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
                 * np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1))
        union = np.minimum(areas[best], areas[rest]) if mode == "min" else areas[best] + areas[rest] - inter
        order = rest[inter / union <= threshold]
    return np.array(keep, dtype=np.int64)


@contextlib.contextmanager
def original_style_helpers():
    """Swap the detector's crop and NMS helpers for the original-style ones while the block runs."""
    saved = mtcnn_detector.crop_resized, mtcnn_detector.nms
    mtcnn_detector.crop_resized, mtcnn_detector.nms = slow_crop_resized, slow_nms
    try:
        yield
    finally:
        mtcnn_detector.crop_resized, mtcnn_detector.nms = saved


def make_slow_detector(model_dir):
    """A detector whose networks are re-bound at every call (run it inside original_style_helpers)."""
    detector = MtcnnDetector(model_dir=model_dir, ctx=mx.cpu())
    detector.pnet, detector.rnet, detector.onet, detector.lnet = (
        RebindingNetwork(model_dir, name, mx.cpu()) for name in ("det1", "det2", "det3", "det4"))
    return detector


def speed_worker(model_dir, runs, shared):
    """Alternates fast and slow-reference calls per image (after one warm-up of each), so that both see
    the same machine load; returns min and median milliseconds. Runs in a subprocess whose environment
    sets the thread counts."""
    fast, slow = MtcnnDetector(model_dir=model_dir, ctx=mx.cpu()), make_slow_detector(model_dir)
    results = {}
    for name in SPEED_IMAGES:
        image, _ = read_image(os.path.join(shared, "sample-images", name))
        times = {"fast": [], "slow_reference": []}
        for run in range(runs + 1):
            for mode, detector in (("fast", fast), ("slow_reference", slow)):
                with original_style_helpers() if mode == "slow_reference" else contextlib.nullcontext():
                    start = time.perf_counter()
                    detector.detect(image)
                    elapsed = (time.perf_counter() - start) * 1000.0
                if run:
                    times[mode].append(elapsed)
        results[name] = {}
        for mode, values in times.items():
            results[name][f"{mode}_ms_min"] = round(min(values), 1)
            results[name][f"{mode}_ms_median"] = round(float(np.median(values)), 1)
        results[name]["speedup_of_min"] = round(min(times["slow_reference"]) / min(times["fast"]), 2)
    return results


def measure_speed(model_dir, runs):
    results = {}
    for threads in (1, os.cpu_count()):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS=str(threads))
        command = [sys.executable, "-m", "bench.bench_mtcnn", "--worker", "--runs", str(runs), "--model-dir", model_dir]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[f"{threads}_threads"] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("speed", "nme", "all"), default="all")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per image")
    parser.add_argument("--nme-limit", type=int, default=None, help="use only the first N AFLW crops")
    parser.add_argument("--output", help="also write the JSON report to this file")
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shared = config.shared_dir()
    if shared is None:
        sys.exit(f"shared data folder not found; set {config.SHARED_ENV}")
    original_dir = os.path.join(shared, "weights", "original", "mtcnn-model")
    if args.worker:
        print(json.dumps(speed_worker(args.model_dir, args.runs, shared)))
        return
    report = {"cpu_count": os.cpu_count()}
    if args.part in ("speed", "all"):
        report["speed_original_weights"] = measure_speed(original_dir, args.runs)
    if args.part in ("nme", "all"):
        aflw_dir = os.path.join(shared, "data", "aflw-5pt")
        report["aflw_nme"] = {
            "original_with_lnet": aflw_nme(MtcnnDetector(model_dir=original_dir).detect, aflw_dir, args.nme_limit),
            "converted_default_without_lnet": aflw_nme(MtcnnDetector(model_dir=config.MTCNN_MODEL_DIR).detect, aflw_dir,
                                                       args.nme_limit),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
