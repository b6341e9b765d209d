"""Trainer pieces shared by train.py and its tests: devices, learning-rate schedule, trainer state, resume.

Checkpoint files for epoch E under ``prefix`` (all written atomically, in this order):

* ``prefix-symbol.json`` + ``prefix-EEEE.params``: the network cut at ``fc1_output`` (what inference loads);
* ``prefix-EEEE.states``: the optimizer's state (momentum / Adam moments), from ``Module.save_optimizer_states``;
* ``prefix-EEEE.trainer.json``: epoch, global step, learning-rate schedule, best epoch so far. Written last,
  so its presence marks epoch E as complete and resumable.
"""
import glob
import json
import math
import os
import re

import mxnet as mx

from .checkpoint import _atomic_write, checkpoint_paths
from .errors import CheckpointError

STATE_VERSION = 1


def get_devices(gpus=None, environ=None):
    """Contexts to train on: ``gpus`` "0,1" if given, else ``$CUDA_VISIBLE_DEVICES``, else the CPU.

    The environment variable lists devices the process sees renumbered from 0, so "2,3" gives gpu(0), gpu(1).
    An explicit ``gpus`` that this MXNet build cannot see raises ValueError; a listed environment variable
    on a machine (or build) without GPUs falls back to the CPU.
    """
    environ = os.environ if environ is None else environ
    available = _num_gpus()
    if gpus is not None and str(gpus).strip() not in ("", "-1"):
        ids = [int(x) for x in str(gpus).split(",") if x.strip()]
        missing = [i for i in ids if i >= available or i < 0]
        if missing:
            raise ValueError(f"--gpus {gpus}: this MXNet build sees {available} GPU(s)")
        return [mx.gpu(i) for i in ids]
    listed = [x for x in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    if listed and available:
        return [mx.gpu(i) for i in range(min(len(listed), available))]
    return [mx.cpu()]


def _num_gpus():
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:
        return 0


class LRSchedule(mx.lr_scheduler.LRScheduler):
    """Learning rate as a pure function of the global step (so a resumed run continues it exactly).

    ``mode="step"``: ``base_lr * factor ** (number of steps in lr_steps already passed)``;
    ``mode="cosine"``: ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t)) / 2`` over ``total_steps``.
    Both start with ``warmup`` steps rising linearly from ``base_lr / warmup`` to ``base_lr``.
    """

    def __init__(self, base_lr, total_steps, mode="step", lr_steps=(), factor=0.1, warmup=0, final_lr=0.0):
        super().__init__(base_lr=base_lr)
        if mode not in ("step", "cosine"):
            raise ValueError(f"unknown learning-rate schedule '{mode}' (step or cosine)")
        self.mode, self.total_steps = mode, max(int(total_steps), 1)
        self.lr_steps, self.factor = sorted(int(s) for s in lr_steps), float(factor)
        self.warmup, self.final_lr = max(int(warmup), 0), float(final_lr)

    def __call__(self, num_update):
        if num_update < self.warmup:
            return self.base_lr * (num_update + 1) / self.warmup
        if self.mode == "step":
            passed = sum(1 for step in self.lr_steps if num_update >= step)
            return self.base_lr * self.factor ** passed
        t = min(max(num_update - self.warmup, 0) / max(self.total_steps - self.warmup, 1), 1.0)
        return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def to_dict(self):
        """The schedule's settings, for the trainer state file."""
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "mode": self.mode,
                "lr_steps": self.lr_steps, "factor": self.factor, "warmup": self.warmup, "final_lr": self.final_lr}

    @classmethod
    def from_dict(cls, settings):
        """Rebuild a schedule saved by ``to_dict``."""
        return cls(**settings)


def default_lr_steps(total_steps):
    """Step schedule used when ``--lr-steps`` is empty: divide by 10 at 50 % and 75 % of the run."""
    return [max(int(total_steps * 0.5), 1), max(int(total_steps * 0.75), 1)]


def parse_lr_steps(text):
    """``"10000,20000"`` -> ``[10000, 20000]``; empty -> ``[]``."""
    return [int(x) for x in str(text or "").split(",") if x.strip()]


def state_paths(prefix, epoch):
    """``(optimizer_states_path, trainer_state_path)`` of epoch ``epoch``."""
    return f"{prefix}-{int(epoch):04d}.states", f"{prefix}-{int(epoch):04d}.trainer.json"


def save_trainer_state(prefix, epoch, module, state):
    """Write the optimizer states of ``module`` and the ``state`` dict for ``epoch`` (atomically, state last)."""
    states_path, state_path = state_paths(prefix, epoch)
    _atomic_write(states_path, module.save_optimizer_states)
    body = dict(state, version=STATE_VERSION, epoch=int(epoch))
    _atomic_write(state_path, lambda tmp: _write_json(tmp, body))
    return state_path


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def load_trainer_state(prefix, epoch):
    """Read the trainer state dict of ``epoch`` (CheckpointError if missing or malformed)."""
    state_path = state_paths(prefix, epoch)[1]
    try:
        with open(state_path, "r", encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: trainer state not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path}: not a trainer state JSON ({exc})") from None
    if not isinstance(state, dict) or not {"epoch", "global_step", "schedule"} <= set(state):
        raise CheckpointError(f"{state_path}: trainer state lacks epoch/global_step/schedule")
    return state


def find_resume_epoch(prefix):
    """Last epoch under ``prefix`` whose params, symbol, optimizer states and trainer state all exist, or None."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.trainer\.json$")
    epochs = []
    for path in glob.glob(glob.escape(prefix) + "-*.trainer.json"):
        match = pattern.search(os.path.basename(path))
        if match:
            epoch = int(match.group(1))
            needed = list(checkpoint_paths(prefix, epoch)) + [state_paths(prefix, epoch)[0]]
            if all(os.path.isfile(p) for p in needed):
                epochs.append(epoch)
    return max(epochs) if epochs else None


def initializer_for(network):
    """The original's initialiser (SPEC §4.4): Xavier gaussian for ResNets, uniform for MobileNets."""
    if network[0] in "ry":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    if network[0] in "ix":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
    return mx.init.Xavier(rnd_type="uniform", factor_type="in", magnitude=2)
