"""Distributed training on MXNet's parameter server, on loopback: 2 workers + 1 server started by tools/launch.py.

Checks that the workers hold identical weights after every synchronous step, that the result equals one
process splitting the same total batch over two CPU contexts, and that a killed worker stops the job.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest

from data.records import PackWriter, encode_face
from tests.test_train import utkface_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FACES, BATCH, WORKERS = 32, 8, 2        # 2 steps per epoch of 2 x 8 faces
TIMEOUT = 120
# keep the training job sharing this machine responsive, and the runs small
ENV = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1")


def train_command(data_dir, prefix, trace_dir, *extra):
    """train.py without randomness in the data: no shuffle, no augmentation, fixed initialisation."""
    return [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", str(data_dir), "--prefix", str(prefix),
            "--network", "m1", "--multiplier", "0.125", "--per-batch-size", str(BATCH), "--lr", "0.05",
            "--frequent", "1", "--seed", "5", "--shuffle", "0", "--rand-mirror", "0",
            "--trace-dir", str(trace_dir), *extra]


def launch_command(*command, workers=WORKERS, timeout=TIMEOUT - 20):
    return [sys.executable, os.path.join(ROOT, "tools", "launch.py"), "-n", str(workers), "-s", "1",
            "--timeout", str(timeout), "--", *command]


@pytest.fixture(scope="module")
def faces(shared):
    """32 UTKFace training faces resized to 112x112, with their (gender, age)."""
    result = []
    for row in utkface_rows(shared, "train", N_FACES):
        image = cv2.imread(os.path.join(shared, "data", "utkface", row["path"]))
        result.append((encode_face(cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)),
                       int(row["gender"]), int(row["age"])))
    return result


def write_pack(path, faces, order):
    with PackWriter(str(path)) as writer:
        for index in order:
            writer.write(*faces[index])


@pytest.fixture(scope="module")
def packs(faces, tmp_path_factory):
    """The same faces twice: in the order the workers split them, and in the order one process must read them.

    Worker w reads records w, w+2, w+4, ...; its k-th batch is records 2(kB+j)+w for j < B. The single-process
    pack holds worker 0's k-th batch followed by worker 1's, so its k-th batch of 2B, split over two CPU
    contexts, gives each context what the corresponding worker sees (BatchNorm statistics are per replica).
    """
    folder = tmp_path_factory.mktemp("dist-packs")
    write_pack(folder / "workers" / "train", faces, range(N_FACES))
    single_order = [2 * (k * BATCH + j) + w for k in range(N_FACES // (WORKERS * BATCH))
                    for w in range(WORKERS) for j in range(BATCH)]
    write_pack(folder / "single" / "train", faces, single_order)
    return folder


def read_trace(trace_dir, rank):
    with open(os.path.join(trace_dir, f"rank{rank}.jsonl")) as f:
        return [line for line in f.read().splitlines() if line]


def fixed_gammas(symbol_path):
    """Names of the BatchNorm gammas that the network never uses (fix_gamma, MXNet's default).

    MXNet's forward resets them to 1 on the device, so their stored value depends only on where the
    optimizer keeps its copy of the weights (a 'device' kvstore decays its own copy; dist_sync workers
    update the device copy), not on the training.
    """
    with open(symbol_path) as f:
        nodes = json.load(f)["nodes"]
    return {nodes[node["inputs"][1][0]]["name"] for node in nodes
            if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma", "True") in ("True", "true", "1")}


def test_two_workers_match_each_other_and_one_process(packs, tmp_path):
    dist_trace, single_trace = tmp_path / "dist-trace", tmp_path / "single-trace"
    dist_prefix, single_prefix = tmp_path / "dist" / "model", tmp_path / "single" / "model"
    env = ENV
    done = subprocess.run(launch_command(*train_command(packs / "workers", dist_prefix, dist_trace,
                                                        "--kvstore", "dist_sync", "--end-epoch", "2")),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "worker 0 of 2; batch 8 per worker, 16 per step in total" in done.stdout

    # (a) identical weights on both workers after every step (bit for bit: same sum, same update)
    traces = [read_trace(dist_trace, rank) for rank in range(WORKERS)]
    assert len(traces[0]) == 4 and traces[0] == traces[1]
    final = [mx.nd.load(str(dist_trace / f"rank{rank}.params")) for rank in range(WORKERS)]
    for name in final[0]:
        if name.startswith("arg:"):
            np.testing.assert_array_equal(final[0][name].asnumpy(), final[1][name].asnumpy(), err_msg=name)
    # only rank 0 saved checkpoints, both epochs
    assert sorted(p.name for p in dist_prefix.parent.glob("*.params")) == ["model-0001.params", "model-0002.params"]

    # (b) one process, two CPU contexts with the same per-context batches, 'device' kvstore
    done = subprocess.run(train_command(packs / "single", single_prefix, single_trace,
                                        "--cpus", "2", "--kvstore", "device", "--end-epoch", "2"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "batch 16 (8 per device)" in done.stdout
    # the checkpoints: weights, and the BatchNorm statistics averaged over workers / over devices
    got = mx.nd.load(f"{dist_prefix}-0002.params")
    expected = mx.nd.load(f"{single_prefix}-0002.params")
    unused = {"arg:" + name for name in fixed_gammas(f"{single_prefix}-symbol.json")}
    assert set(got) == set(expected) and unused < set(got)
    for name in sorted(set(expected) - unused):
        want = expected[name].asnumpy()
        # weights and BatchNorm moving statistics alike (the statistics are read only after the last step's
        # backward, which updates them, has run: see agegender.training.settled_aux_params)
        np.testing.assert_allclose(got[name].asnumpy(), want, rtol=1e-4, atol=1e-5 * max(np.abs(want).max(), 1e-3),
                                   err_msg=name)
    first = mx.nd.load(f"{dist_prefix}-0001.params")
    assert not np.allclose(first["arg:conv_1_conv2d_weight"].asnumpy(), got["arg:conv_1_conv2d_weight"].asnumpy())


def test_killed_worker_stops_the_job(packs, tmp_path):
    trace = tmp_path / "trace"
    command = launch_command(*train_command(packs / "workers", tmp_path / "run" / "model", trace,
                                            "--kvstore", "dist_sync", "--end-epoch", "100000", "--ckpt", "0"))
    stderr_path = tmp_path / "launch.err"
    with open(stderr_path, "w") as stderr, open(tmp_path / "launch.out", "w") as stdout:
        launcher = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=stdout, stderr=stderr,
                                    start_new_session=True)
    pids = {}
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and launcher.poll() is None:
            started = os.path.isfile(trace / "rank1.jsonl") and len(read_trace(trace, 1)) >= 2
            if started:
                break
            time.sleep(0.2)
        assert launcher.poll() is None, stderr_path.read_text()
        pids = {m.group(1): int(m.group(2))
                for m in re.finditer(r"started (\w+) pid (\d+)", stderr_path.read_text())}
        os.kill(pids["worker1"], signal.SIGKILL)
        code = launcher.wait(timeout=60)
        message = stderr_path.read_text()
        assert code != 0
        assert f"worker1 (pid {pids['worker1']}) exited with signal SIGKILL; stopping the others" in message
        for name, pid in pids.items():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        for pid in [launcher.pid] + list(pids.values()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        launcher.wait(timeout=10)
