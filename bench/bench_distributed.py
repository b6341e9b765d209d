"""Training throughput of one process against 2 workers + 1 server (dist_sync, loopback); prints one JSON line.

    python -m bench.bench_distributed [--data-dir PACK_DIR] [--multiplier 0.25 --batch 32 --steps 20]

Both runs are train.py end to end (reading a pack, forward, backward, update), one CPU context per process,
without checkpoints; img/s is the mean of the logged progress windows after the first (warm-up) one,
summed over the workers for the distributed run. Without --data-dir a pack of random-pixel faces is made in
a temporary folder. Communication per step: every worker pushes its gradient and pulls the summed gradient,
each the size of all weights in float32, so 2 x parameter bytes per worker and the server moves W times that.
Thread settings come from the environment (OMP_NUM_THREADS, MXNET_CPU_WORKER_NTHREADS) and are reported.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

import symbols
from agegender import config
from data.records import PackWriter, encode_face

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM_FACES = 256


def parameter_count(network, multiplier):
    """Number of trained weights of the fc1 network (what every step pushes and pulls)."""
    fc1 = symbols.get_symbol(network, num_classes=config.FC1_SIZE, multiplier=multiplier)
    shapes, _, _ = fc1.infer_shape(data=(1, 3) + config.IMAGE_SIZE)
    return sum(int(np.prod(shape)) for name, shape in zip(fc1.list_arguments(), shapes) if name != "data")


def write_random_pack(folder, count, seed=0):
    rng = np.random.RandomState(seed)
    with PackWriter(os.path.join(folder, "train")) as writer:
        for _ in range(count):
            image = rng.randint(0, 256, config.IMAGE_SIZE + (3,), dtype=np.uint8)
            writer.write(encode_face(image), int(rng.randint(0, 2)), int(rng.randint(1, 90)))


def logged_speeds(log_paths):
    """img/s of every progress window after the first, per log file."""
    speeds = []
    for path in log_paths:
        with open(path) as f:
            values = [float(v) for v in re.findall(r"Batch\[\d+/\d+\] step \d+ lr \S+ ([\d.]+) img/s", f.read())]
        speeds.append(values[1:] if len(values) > 1 else values)
    return speeds


def run_training(command, prefix, timeout):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"bench_distributed: {' '.join(command[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return logged_speeds(sorted(glob.glob(prefix + "*.log")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="", help="folder with train.rec (default: random faces)")
    p.add_argument("--network", default="m1")
    p.add_argument("--multiplier", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=32, help="batch per worker")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--window", type=int, default=5, help="batches per logged speed window")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)

    params = parameter_count(args.network, args.multiplier)
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "pack")
            write_random_pack(data_dir, RANDOM_FACES)
        train = [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", data_dir, "--network", args.network,
                 "--multiplier", str(args.multiplier), "--per-batch-size", str(args.batch), "--ckpt", "0",
                 "--max-steps", str(args.steps), "--end-epoch", "1000", "--frequent", str(args.window),
                 "--seed", "1"]
        single_prefix = os.path.join(tmp, "single", "model")
        single = run_training(train + ["--prefix", single_prefix, "--kvstore", "device"], single_prefix,
                              args.timeout)
        dist_prefix = os.path.join(tmp, "dist", "model")
        launch = [sys.executable, os.path.join(ROOT, "tools", "launch.py"), "-n", "2", "-s", "1",
                  "--timeout", str(args.timeout - 10), "--"]
        dist = run_training(launch + train + ["--prefix", dist_prefix, "--kvstore", "dist_sync"], dist_prefix,
                            args.timeout)

    param_bytes = params * 4
    result = {
        "network": f"{args.network} x{args.multiplier:g}", "parameters": params, "parameter_bytes": param_bytes,
        "bytes_per_step_per_worker": 2 * param_bytes, "server_bytes_per_step_2_workers": 2 * 2 * param_bytes,
        "batch_per_worker": args.batch, "steps": args.steps,
        "img_per_s_1_process": round(float(np.mean(single[0])), 1),
        "img_per_s_2_workers_total": round(float(sum(np.mean(s) for s in dist)), 1),
        "img_per_s_per_worker": [round(float(np.mean(s)), 1) for s in dist],
        "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MXNET_CPU_WORKER_NTHREADS": os.environ.get("MXNET_CPU_WORKER_NTHREADS"),
    }
    result["speedup_2_workers"] = round(result["img_per_s_2_workers_total"] / result["img_per_s_1_process"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
