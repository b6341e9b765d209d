"""Per-stage profile of the detectors, before and after issue 14, on one thread; prints JSON.

    python -m bench.bench_detect [--runs 3] [--images test1.jpg,oscar1.jpg] [--output FILE]

MTCNN (original weights, with LNet): today's detector against the frozen pre-issue one
(:mod:`bench.mtcnn_baseline`), both on MXNet and on onnxruntime (each exported in its own form), calls
alternating in one process per backend so that both see the same machine load. ESSH/RetinaFace (the
converted default): uncapped, at the default ``config.ESSH_MAX_SIZE`` and at 640. Every worker runs in
its own subprocess with OMP_NUM_THREADS = MXNET_CPU_WORKER_NTHREADS = 1 and reports its peak RSS.

Times are CPU milliseconds of the process (``time.process_time``: steadier than wall time on a shared
machine; with one thread they are close to wall time on an idle one), the minimum over ``--runs``
calls after one warm-up; stages are the detectors' own (``detector.timer``), taken from the fastest call.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from agegender import config

IMAGES = ("test1.jpg", "oscar1.jpg")
ESSH_SIZES = (None, config.ESSH_MAX_SIZE, 640)


def _profile(detector, image, runs):
    """(min CPU ms, stage ms of that call, faces) of ``detector.detect(image)`` after one warm-up."""
    from agegender.profiling import StageTimer
    detector.timer = StageTimer(time.process_time)
    detector.detect(image)
    best = None
    for _ in range(runs):
        detector.timer.reset()
        start = time.process_time()
        boxes, _ = detector.detect(image)
        elapsed = (time.process_time() - start) * 1000.0
        if best is None or elapsed < best[0]:
            best = (elapsed, dict(detector.timer.ms), len(boxes))
    return {"ms": round(best[0], 1), "stages_ms": {k: round(v, 1) for k, v in best[1].items()}, "faces": best[2]}


def mtcnn_worker(task):
    from agegender.image import read_image
    from bench.mtcnn_baseline import BaselineMtcnnDetector
    from mtcnn import MtcnnDetector
    backend = task["backend"]
    detectors = {"before": BaselineMtcnnDetector(task["before_dir"], backend=backend),
                 "after": MtcnnDetector(task["after_dir"], backend=backend)}
    results = {}
    for path in task["images"]:
        image, _ = read_image(path)
        rows = {label: [] for label in detectors}
        for _ in range(task["runs"]):          # alternate, one call each per round
            for label, detector in detectors.items():
                rows[label].append(_profile(detector, image, 1))
        best = {label: min(calls, key=lambda r: r["ms"]) for label, calls in rows.items()}
        best["speedup"] = round(best["before"]["ms"] / best["after"]["ms"], 2)
        results[os.path.basename(path)] = best
    return results


def essh_worker(task):
    from agegender.image import read_image
    from essh.detector import ESSHDetector
    results = {}
    detectors = {str(size): ESSHDetector(task["model"], backend=task["backend"], max_size=size) for size in ESSH_SIZES}
    for path in task["images"]:
        image, _ = read_image(path)
        results[os.path.basename(path)] = {f"max_size_{size}": _profile(detector, image, task["runs"])
                                           for size, detector in detectors.items()}
    return results


WORKERS = {"mtcnn": mtcnn_worker, "essh": essh_worker}


def run_task(task):
    """Run one worker in a one-thread subprocess; returns its result with ``peak_rss_mb``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1")
    done = subprocess.run([sys.executable, "-m", "bench.bench_detect", "--worker", json.dumps(task)], env=env,
                          capture_output=True, text=True, cwd=config.PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker {task['kind']} ({task['backend']}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile(shared, runs=3, images=IMAGES):
    """The whole profile (both detectors, both backends) as a dict."""
    from bench.mtcnn_baseline import export_onnx as export_before
    from essh.export import export_essh
    from mtcnn.export import export_mtcnn
    original = os.path.join(shared, "weights", "original", "mtcnn-model")
    paths = [os.path.join(shared, "sample-images", name) for name in images]
    temp = tempfile.mkdtemp(prefix="bench-detect-")
    try:
        before_onnx, after_onnx = os.path.join(temp, "before"), os.path.join(temp, "after")
        export_before(original, before_onnx)
        export_mtcnn(original, after_onnx)
        essh_onnx = export_essh(config.ESSH_DEFAULT_MODEL, os.path.join(temp, "essh.onnx"))
        report = {"settings": {"runs": runs, "threads": 1, "clock": "process CPU time", "mtcnn_weights": original,
                               "essh_model": config.ESSH_DEFAULT_MODEL, "date": time.strftime("%Y-%m-%d %H:%M")},
                  "mtcnn": {}, "essh": {}}
        for backend in ("mxnet", "onnx"):
            dirs = (original, original) if backend == "mxnet" else (before_onnx, after_onnx)
            report["mtcnn"][backend] = run_task({"kind": "mtcnn", "backend": backend, "before_dir": dirs[0],
                                                 "after_dir": dirs[1], "images": paths, "runs": runs})
            model = config.ESSH_DEFAULT_MODEL if backend == "mxnet" else essh_onnx
            report["essh"][backend] = run_task({"kind": "essh", "backend": backend, "model": model,
                                                "images": paths, "runs": runs})
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return report


def markdown(report):
    """Tables: MTCNN stages before/after per backend and image; ESSH stages per size."""
    lines = []
    for backend, images in report["mtcnn"].items():
        if backend == "peak_rss_mb":
            continue
        names = [n for n in images if n != "peak_rss_mb"]
        stages = list(dict.fromkeys(s for n in names for label in ("before", "after") for s in images[n][label]["stages_ms"]))
        lines += [f"MTCNN on {backend}, one thread, CPU ms (before = frozen pre-issue detector, same run)", "",
                  "| stage | " + " | ".join(f"{n} before | {n} after" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]
        for stage in stages:
            cells = " | ".join(f"{images[n]['before']['stages_ms'].get(stage, 0):.0f} | "
                               f"{images[n]['after']['stages_ms'].get(stage, 0):.0f}" for n in names)
            lines.append(f"| {stage} | {cells} |")
        cells = " | ".join(f"**{images[n]['before']['ms']:.0f}** | **{images[n]['after']['ms']:.0f}** "
                           f"({images[n]['speedup']:.2f}x)" for n in names)
        lines += [f"| total | {cells} |", ""]
    for backend, images in report["essh"].items():
        names = [n for n in images if n != "peak_rss_mb"]
        sizes = list(images[names[0]])
        stages = list(images[names[0]][sizes[0]]["stages_ms"])
        lines += [f"RetinaFace (--det 1) on {backend}, one thread, CPU ms by input cap", "",
                  "| stage | " + " | ".join(f"{n} {s.replace('max_size_', '')}" for n in names for s in sizes) + " |",
                  "|---|" + "---|" * (len(names) * len(sizes))]
        for stage in stages + ["total"]:
            cells = " | ".join(f"{images[n][s]['ms'] if stage == 'total' else images[n][s]['stages_ms'].get(stage, 0):.0f}"
                               for n in names for s in sizes)
            lines.append(f"| {stage} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", default=",".join(IMAGES))
    parser.add_argument("--output", help="also write the JSON report to this file (and a .md next to it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        result = WORKERS[task["kind"]](task)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        print(json.dumps(result))
        return
    shared = config.shared_dir()
    if shared is None:
        sys.exit(f"shared data folder not found; set {config.SHARED_ENV}")
    report = profile(shared, args.runs, args.images.split(","))
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write(markdown(report) + "\n")


if __name__ == "__main__":
    main()
