"""Training and evaluation throughput of the age/gender network on random faces; prints one JSON line.

    python -m bench.bench_train [--network m1 --multiplier 0.25 --batch 128 --iters 10]

Training speed is forward + backward + SGD update of the full training graph (fc1 + loss heads);
evaluation speed is an inference-mode forward. Thread settings come from the environment
(OMP_NUM_THREADS, MXNET_CPU_WORKER_NTHREADS) and are reported with the numbers.
"""
import argparse
import json
import os
import time

import mxnet as mx
import numpy as np

import symbols
from agegender import config
from agegender.losses import get_loss_symbol
from agegender.training import initializer_for


def random_batch(batch, rng):
    """A DataBatch of random pixels with valid labels (random gender and age)."""
    data = rng.uniform(0, 255, size=(batch, 3) + config.IMAGE_SIZE).astype(np.float32)
    label = np.zeros((batch, 1 + config.AGE_CLASSES), np.float32)
    label[:, 0] = rng.randint(0, 2, batch)
    for row, age in enumerate(rng.randint(1, config.MAX_AGE + 1, batch)):
        label[row, 1:1 + age] = 1
    return mx.io.DataBatch(data=[mx.nd.array(data)], label=[mx.nd.array(label)])


def timed(step, iters, warmup):
    """Seconds per call of ``step`` (which must block until done), after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="m1")
    p.add_argument("--multiplier", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)

    fc1 = symbols.get_symbol(args.network, multiplier=args.multiplier)
    module = mx.mod.Module(get_loss_symbol(fc1, gender_weight=10.0), data_names=["data"],
                           label_names=["softmax_label"], context=mx.cpu())
    shape = (args.batch, 3) + config.IMAGE_SIZE
    module.bind(data_shapes=[("data", shape)], label_shapes=[("softmax_label", (args.batch, 1 + config.AGE_CLASSES))])
    module.init_params(initializer_for(args.network))
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.001, "momentum": 0.9, "wd": 5e-4})
    batch = random_batch(args.batch, np.random.RandomState(0))

    def train_step():
        module.forward_backward(batch)
        module.update()
        module.get_outputs()[2].wait_to_read()
        mx.nd.waitall()

    def eval_step():
        module.forward(batch, is_train=False)
        module.get_outputs()[2].wait_to_read()

    train_s = timed(train_step, args.iters, args.warmup)
    eval_s = timed(eval_step, args.iters, args.warmup)
    print(json.dumps({
        "network": args.network, "multiplier": args.multiplier, "batch": args.batch,
        "train_img_per_s": round(args.batch / train_s, 1), "eval_faces_per_s": round(args.batch / eval_s, 1),
        "train_ms_per_batch": round(1000 * train_s, 1), "eval_ms_per_batch": round(1000 * eval_s, 1),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MXNET_CPU_WORKER_NTHREADS": os.environ.get("MXNET_CPU_WORKER_NTHREADS"),
        "MXNET_SUBGRAPH_BACKEND": os.environ.get("MXNET_SUBGRAPH_BACKEND"),
        "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
