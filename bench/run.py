"""Deployment benchmark: MXNet against onnxruntime for the age/gender network, both detectors and the pipeline.

    python -m bench.run                 # full report -> bench/results/report.json + report.md
    python -m bench.run --quick         # smoke run (one thread, few repetitions)

Every figure comes from this run: the checkpoints are exported to ONNX in a temporary folder first, then
each measurement runs in its own subprocess (OMP_NUM_THREADS = MXNET_CPU_WORKER_NTHREADS = threads; the
onnxruntime sessions use the same count) that reports its peak RSS. onnxruntime workers never import
MXNet (checked). Measured:

* age/gender network: median ms per face at batch 1 and faces/s at batch 64, for the shipped model
  (when trained) and the original checkpoint, on the golden aligned faces;
* detectors (default MTCNN and ESSH/RetinaFace): median ms of ``detect`` per image (test1.jpg, oscar1.jpg);
* pipeline (default detector, test.py's grouping of images): images/s over the sample images, and on
  test1.jpg the whole ``analyze`` against its detector's plus its network's own time;
* detection profile (:mod:`bench.bench_detect`): MTCNN per stage, today's against the frozen pre-issue
  detector in the same run, and RetinaFace per stage by input cap, one thread;
* memory: peak RSS of ``test.py`` on oscar1.jpg and t2.jpg (default MXNet path and onnxruntime);
* throughput: ``test.py`` over a folder of ordinary photos (copies of test1/test2/test/astronaut), default
  path and ``--det 1 --det-size 640 --backend onnx``, all cores, images/s without start-up (two folder
  sizes, the difference).

Ratios compare each figure with MXNet running the original checkpoint (age/gender) or the same model
(detectors, pipeline) at the same thread count.
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

import numpy as np

from agegender import config
from bench.common import median_ms

RESULTS_DIR = os.path.join(config.PROJECT_ROOT, "bench", "results")
FACES_PER_BATCH = 64
PIPELINE_IMAGES_PER_BATCH = 8     # test.py --images-per-batch default
TARGET_NET_SPEEDUP = 2.0          # onnxruntime shipped model vs MXNet original, batch 1, one thread
TARGET_PIPELINE_OVERHEAD = 1.2    # whole pipeline vs detector + network, test1.jpg
# Issue 14
TARGET_MTCNN_SPEEDUP = 3.5        # today's MTCNN vs the pre-issue one, one thread, both backends and images
TARGET_ESSH_640_MS = 50.0         # RetinaFace on test1.jpg at --det-size 640, onnxruntime, one thread
TARGET_RSS_MB = {"mxnet": 1500, "onnx": 1000}   # test.py peak RSS on oscar1.jpg and t2.jpg
TARGET_IMAGES_PER_S = {"default": 4.0, "det1_640_onnx": 15.0}
MEMORY_IMAGES = ("oscar1.jpg", "t2.jpg")
THROUGHPUT_PHOTOS = ("test1.jpg", "test2.jpg", "test.jpg")   # + the project's astronaut.jpg
THROUGHPUT_COPIES = (2, 6)


# ----------------------------------------------------------------------------------------------- workers

def _golden_faces(reference_dir):
    import cv2
    names = sorted(n for n in os.listdir(reference_dir) if n.endswith("_face0_aligned112.png"))
    return [cv2.imread(os.path.join(reference_dir, n)) for n in names]


def agegender_worker(task):
    """ms per face at batch 1 and faces/s at batch 64 for one model on one backend."""
    from agegender.model import AgeGenderModel, faces_to_batch
    model = AgeGenderModel(task["model"], backend=task["backend"])
    faces = faces_to_batch(_golden_faces(task["reference_dir"]))
    single = faces[:1]
    batch = np.resize(faces, (FACES_PER_BATCH,) + faces.shape[1:])
    ms_single = median_ms(lambda: model.forward(single), task["runs"], warmup=3)
    ms_batch = median_ms(lambda: model.forward(batch), task["batch_runs"], warmup=1)
    return {"batch1_ms_per_face": ms_single, "batch64_faces_per_s": FACES_PER_BATCH * 1000.0 / ms_batch}


def detector_worker(task):
    """Median ms of ``detect`` per image for one detector on one backend."""
    from agegender.image import read_image
    from analysis.detectors import create_detector
    detector = create_detector(task["det"], model=task.get("det_model"), backend=task["backend"])
    ms_per_image = {}
    for path in task["images"]:
        image, _ = read_image(path)
        ms_per_image[os.path.basename(path)] = median_ms(lambda: detector.detect(image), task["runs"])
    return {"ms_per_image": ms_per_image}


def pipeline_worker(task):
    """Images/s over a folder (groups of 8 images share a forward batch, as test.py) and the test1.jpg breakdown."""
    from agegender.image import read_image
    from analysis.pipeline import FaceAnalyzer
    analyzer = FaceAnalyzer(task["model"], det=0, gpu=-1, det_model=task["mtcnn_model"], backend=task["backend"])
    images = [read_image(path)[0] for path in task["images"]]

    def whole_folder():
        for start in range(0, len(images), PIPELINE_IMAGES_PER_BATCH):
            analyzer.analyze_many(images[start:start + PIPELINE_IMAGES_PER_BATCH])

    folder_ms = median_ms(whole_folder, task["passes"])
    image, _ = read_image(task["breakdown_image"])
    crops = analyzer.finder.find(image).crops
    pipeline_ms = median_ms(lambda: analyzer.analyze(image), task["runs"])
    detect_ms = median_ms(lambda: analyzer.finder.detector.detect(image), task["runs"])
    network_ms = median_ms(lambda: analyzer.model.predict(crops), task["runs"])
    return {"images": len(images), "images_per_s": len(images) * 1000.0 / folder_ms,
            "breakdown_image": os.path.basename(task["breakdown_image"]), "faces": len(crops),
            "pipeline_ms": pipeline_ms, "detect_ms": detect_ms, "network_ms": network_ms,
            "overhead_ratio": pipeline_ms / (detect_ms + network_ms)}


WORKERS = {"agegender": agegender_worker, "detector": detector_worker, "pipeline": pipeline_worker}


def run_worker(task):
    """Entry point of a measurement subprocess: prints one JSON line with the result and the peak RSS."""
    result = WORKERS[task["kind"]](task)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["mxnet_imported"] = "mxnet" in sys.modules
    if task["backend"] == "onnx" and result["mxnet_imported"]:
        raise RuntimeError("the onnx backend imported MXNet")
    print(json.dumps(result))


def measure(task, threads):
    """Run one task in a subprocess with ``threads`` threads; returns its result dict."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS=str(threads))
    done = subprocess.run([sys.executable, "-m", "bench.run", "--worker", json.dumps(task)], env=env,
                          capture_output=True, text=True, cwd=config.PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker {task['kind']} ({task['backend']}) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {task['kind']:9} {task.get('label', ''):22} {task['backend']:5} {threads:2} threads: "
          f"{ {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()} }", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------------- parent

def export_models(folder, models):
    """Export the checkpoints under test to ONNX in ``folder``; returns {label: onnx path}."""
    from agegender.onnx_export import export_agegender
    from essh.export import export_essh
    from mtcnn.export import export_mtcnn
    paths = {label: export_agegender(spec, os.path.join(folder, f"{label}.onnx")) for label, spec in models.items()}
    paths["mtcnn"] = os.path.dirname(export_mtcnn(config.MTCNN_MODEL_DIR, os.path.join(folder, "mtcnn"))[0])
    paths["essh"] = export_essh(config.ESSH_DEFAULT_MODEL, os.path.join(folder, "essh.onnx"))
    return paths


def benchmark(args, shared):
    from agegender.checkpoint import checkpoint_paths, parse_model_spec
    from bench.bench_mtcnn import SPEED_IMAGES
    original = os.path.join(shared, "weights", "original", "age-gender", "model") + ",0"
    models = {"original": original}
    if os.path.exists(checkpoint_paths(*parse_model_spec(args.shipped_model))[1]):
        models = {"shipped": args.shipped_model, "original": original}
    reference_dir = os.path.join(shared, "reference", "mtcnn")
    sample_dir = os.path.join(shared, "sample-images")
    folder_images = sorted(os.path.join(sample_dir, n) for n in os.listdir(sample_dir))
    if args.quick:
        folder_images = folder_images[:2]
    thread_counts = [1] if args.quick else sorted({1, os.cpu_count()})
    runs = 3 if args.quick else args.runs
    temp = tempfile.mkdtemp(prefix="bench-onnx-")
    try:
        onnx_paths = export_models(temp, models)
        report = {"settings": {"cpu_count": os.cpu_count(), "threads": thread_counts, "runs": runs,
                               "quick": args.quick, "models": models,
                               "mtcnn_model": config.MTCNN_MODEL_DIR, "essh_model": config.ESSH_DEFAULT_MODEL,
                               "date": time.strftime("%Y-%m-%d %H:%M")},
                  "agegender": [], "detectors": [], "pipeline": []}
        pipeline_label = "shipped" if "shipped" in models else "original"
        for threads in thread_counts:
            for label, spec in models.items():
                for backend, model in (("mxnet", spec), ("onnx", onnx_paths[label])):
                    task = {"kind": "agegender", "label": label, "backend": backend, "model": model,
                            "reference_dir": reference_dir, "runs": runs * 10, "batch_runs": runs}
                    report["agegender"].append({"model": label, "backend": backend, "threads": threads,
                                                **measure(task, threads)})
            for det, name in ((0, "mtcnn"), (1, "essh")):
                for backend in ("mxnet", "onnx"):
                    task = {"kind": "detector", "label": name, "backend": backend, "det": det, "runs": runs,
                            "images": [os.path.join(sample_dir, n) for n in SPEED_IMAGES]}
                    if backend == "onnx":
                        task["det_model"] = onnx_paths[name]
                    report["detectors"].append({"detector": name, "backend": backend, "threads": threads,
                                                **measure(task, threads)})
            for backend in ("mxnet", "onnx"):
                task = {"kind": "pipeline", "label": f"mtcnn+{pipeline_label}", "backend": backend,
                        "model": models[pipeline_label] if backend == "mxnet" else onnx_paths[pipeline_label],
                        "mtcnn_model": config.MTCNN_MODEL_DIR if backend == "mxnet" else onnx_paths["mtcnn"],
                        "images": folder_images, "breakdown_image": os.path.join(sample_dir, "test1.jpg"),
                        "passes": runs, "runs": runs}
                report["pipeline"].append({"model": pipeline_label, "detector": "mtcnn", "backend": backend,
                                           "threads": threads, **measure(task, threads)})
        from bench.bench_detect import profile
        print("  detection profile (bench.bench_detect)", file=sys.stderr)
        report["detector_profile"] = profile(shared, runs=min(runs, 3))
        report["memory"] = measure_memory(shared, onnx_paths, pipeline_label)
        report["throughput"] = measure_throughput(shared, onnx_paths, pipeline_label, temp, quick=args.quick)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    report["targets"] = check_targets(report)
    return report


def _test_py(args, env=None):
    """Run ``test.py args``; returns (wall seconds, peak RSS MB) of that process (``os.wait4``)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "test.py", "--quiet", "--gpu", "-1", *args], cwd=config.PROJECT_ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"test.py {' '.join(args)} failed:\n{error[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


def _onnx_args(onnx_paths, label, det_model=None):
    return ["--backend", "onnx", "--model", onnx_paths[label]] + (det_model or ["--mtcnn-model", onnx_paths["mtcnn"]])


def measure_memory(shared, onnx_paths, label):
    """Peak RSS MB of test.py (default detector) per crowd photo and backend."""
    rows = []
    for name in MEMORY_IMAGES:
        path = os.path.join(shared, "sample-images", name)
        for backend in ("mxnet", "onnx"):
            extra = _onnx_args(onnx_paths, label) if backend == "onnx" else []
            with tempfile.TemporaryDirectory() as out:
                wall, rss = _test_py(extra + [path, "--json", os.path.join(out, "faces.json")])
            rows.append({"image": name, "backend": backend, "peak_rss_mb": round(rss), "wall_s": round(wall, 1)})
            print(f"  memory    {name:12} {backend:5}: {rows[-1]}", file=sys.stderr)
    return rows


def measure_throughput(shared, onnx_paths, label, temp, quick=False):
    """Images/s of test.py over folders of ordinary photos, start-up excluded (see the module docstring)."""
    photos = [os.path.join(shared, "sample-images", n) for n in THROUGHPUT_PHOTOS] + [config.DEFAULT_IMAGE]
    copies = THROUGHPUT_COPIES[:1] if quick else THROUGHPUT_COPIES
    folders = {}
    for count in copies:
        folder = os.path.join(temp, f"photos{count}")
        os.makedirs(folder)
        for i in range(count):
            for path in photos:
                shutil.copy(path, os.path.join(folder, f"{i}_{os.path.basename(path)}"))
        folders[count] = folder
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")}
    modes = {"default": [],
             "det1_640_onnx": _onnx_args(onnx_paths, label, ["--det", "1", "--essh-model", onnx_paths["essh"]])
             + ["--det-size", "640"]}
    rows = []
    for mode, extra in modes.items():
        walls = {count: _test_py(extra + [folder, "--json", os.path.join(temp, "throughput.json")], env)[0]
                 for count, folder in folders.items()}
        small, large = min(walls), max(walls)
        images = (large - small) * len(photos) if large > small else large * len(photos)
        seconds = walls[large] - walls[small] if large > small else walls[large]
        rows.append({"mode": mode, "images_per_s": round(images / seconds, 2), "photos": len(photos),
                     "wall_s": {str(k): round(v, 1) for k, v in walls.items()}})
        print(f"  throughput {mode}: {rows[-1]}", file=sys.stderr)
    return rows


def _find(rows, **keys):
    return next(r for r in rows if all(r[k] == v for k, v in keys.items()))


def check_targets(report):
    """The deployment targets (and issue 14's), with the figures they compare."""
    net = report["agegender"]
    model = "shipped" if any(r["model"] == "shipped" for r in net) else "original"
    baseline = _find(net, model="original", backend="mxnet", threads=1)["batch1_ms_per_face"]
    candidate = _find(net, model=model, backend="onnx", threads=1)["batch1_ms_per_face"]
    speedup = baseline / candidate
    targets = {"net_speedup": {"what": f"age/gender batch 1, one thread: onnxruntime {model} vs MXNet original",
                               "value": round(speedup, 2), "target": f">= {TARGET_NET_SPEEDUP}",
                               "met": speedup >= TARGET_NET_SPEEDUP}}
    for row in report["pipeline"]:
        key = f"pipeline_overhead_{row['backend']}_{row['threads']}t"
        targets[key] = {"what": f"test1.jpg pipeline / (detector + network), {row['backend']}, {row['threads']} threads",
                        "value": round(row["overhead_ratio"], 3), "target": f"<= {TARGET_PIPELINE_OVERHEAD}",
                        "met": row["overhead_ratio"] <= TARGET_PIPELINE_OVERHEAD}
    targets.update(_issue14_targets(report))
    return targets


def _issue14_targets(report):
    """Targets of issue 14 (fast detection, bounded memory)."""
    targets = {}
    for backend, images in report.get("detector_profile", {}).get("mtcnn", {}).items():
        for name, row in images.items():
            if name == "peak_rss_mb":
                continue
            targets[f"mtcnn_speedup_{backend}_{name}"] = {
                "what": f"MTCNN {name}, {backend}, one thread: pre-issue / today's CPU time (same run)",
                "value": row["speedup"], "target": f">= {TARGET_MTCNN_SPEEDUP}",
                "met": row["speedup"] >= TARGET_MTCNN_SPEEDUP}
    essh = report.get("detector_profile", {}).get("essh", {}).get("onnx", {}).get("test1.jpg")
    if essh:
        ms = essh["max_size_640"]["ms"]
        targets["essh_640_test1_onnx"] = {"what": "RetinaFace test1.jpg at --det-size 640, onnxruntime, one thread (CPU ms)",
                                          "value": ms, "target": f"< {TARGET_ESSH_640_MS}", "met": ms < TARGET_ESSH_640_MS}
    for row in report.get("memory", []):
        limit = TARGET_RSS_MB[row["backend"]]
        targets[f"rss_{row['backend']}_{row['image']}"] = {
            "what": f"test.py peak RSS on {row['image']}, {row['backend']} (MB)", "value": row["peak_rss_mb"],
            "target": f"<= {limit}", "met": row["peak_rss_mb"] <= limit}
    for row in report.get("throughput", []):
        goal = TARGET_IMAGES_PER_S[row["mode"]]
        targets[f"throughput_{row['mode']}"] = {
            "what": f"test.py images/s over ordinary photos, {row['mode']}, all {report['settings']['cpu_count']} cores",
            "value": row["images_per_s"], "target": f">= {goal}", "met": row["images_per_s"] >= goal}
    return targets


def markdown(report):
    """The short Markdown tables of a report."""
    s = report["settings"]
    lines = [f"Benchmark {s['date']}, {s['cpu_count']} CPUs, median of {s['runs']} runs"
             f"{' (quick run)' if s['quick'] else ''}; ratio = speed-up over the baseline named in the column.", "",
             "Age/gender network (ratio: vs MXNet running the original checkpoint, same threads)", "",
             "| model | backend | threads | batch 1 ms/face | ratio | batch 64 faces/s | ratio | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["agegender"]:
        base = _find(report["agegender"], model="original", backend="mxnet", threads=r["threads"])
        lines.append(f"| {r['model']} | {r['backend']} | {r['threads']} | {r['batch1_ms_per_face']:.2f} | "
                     f"{base['batch1_ms_per_face'] / r['batch1_ms_per_face']:.2f}x | {r['batch64_faces_per_s']:.0f} | "
                     f"{r['batch64_faces_per_s'] / base['batch64_faces_per_s']:.2f}x | {r['peak_rss_mb']:.0f} |")
    images = list(report["detectors"][0]["ms_per_image"])
    lines += ["", "Detectors, ms per image (ratio: vs MXNet, same detector and threads)", "",
              "| detector | backend | threads | " + " | ".join(f"{n} ms | ratio" for n in images) + " | peak RSS MB |",
              "|---|---|---|" + "---|---|" * len(images) + "---|"]
    for r in report["detectors"]:
        base = _find(report["detectors"], detector=r["detector"], backend="mxnet", threads=r["threads"])
        cells = " | ".join(f"{r['ms_per_image'][n]:.1f} | {base['ms_per_image'][n] / r['ms_per_image'][n]:.2f}x"
                           for n in images)
        lines.append(f"| {r['detector']} | {r['backend']} | {r['threads']} | {cells} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Whole pipeline (MTCNN + age/gender; ratio: vs MXNet, same threads; overhead: test1.jpg "
              "pipeline / (detector + network))", "",
              "| model | backend | threads | images/s | ratio | test1 ms | detector + network ms | overhead | "
              "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["pipeline"]:
        base = _find(report["pipeline"], backend="mxnet", threads=r["threads"])
        lines.append(f"| {r['model']} | {r['backend']} | {r['threads']} | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / base['images_per_s']:.2f}x | {r['pipeline_ms']:.1f} | "
                     f"{r['detect_ms']:.1f} + {r['network_ms']:.1f} | {r['overhead_ratio']:.2f}x | "
                     f"{r['peak_rss_mb']:.0f} |")
    if "detector_profile" in report:
        from bench.bench_detect import markdown as profile_markdown
        lines += ["", profile_markdown(report["detector_profile"]).rstrip()]
    if report.get("memory"):
        lines += ["", "test.py peak memory (default detector)", "", "| image | backend | peak RSS MB | wall s |",
                  "|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['backend']} | {r['peak_rss_mb']} | {r['wall_s']} |" for r in report["memory"]]
    if report.get("throughput"):
        lines += ["", "test.py throughput over ordinary photos (start-up excluded)", "", "| mode | images/s |",
                  "|---|---|"]
        lines += [f"| {r['mode']} | {r['images_per_s']} |" for r in report["throughput"]]
    lines += ["", "Targets", ""]
    for target in report["targets"].values():
        lines.append(f"- {target['what']}: {target['value']} (target {target['target']}): "
                     f"{'met' if target['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one thread, 3 runs, 2 pipeline images")
    parser.add_argument("--runs", type=int, default=10,
                        help="timed calls per figure (batch 1: ten times as many)")
    parser.add_argument("--shipped-model", default=config.DEFAULT_MODEL, help="the shipped checkpoint prefix,epoch")
    parser.add_argument("--out-dir", default=RESULTS_DIR, help="where report.json and report.md go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    shared = config.shared_dir()
    if shared is None:
        sys.exit(f"shared data folder not found; set {config.SHARED_ENV}")
    report = benchmark(args, shared)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    text = markdown(report)
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
