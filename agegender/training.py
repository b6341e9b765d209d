"""Trainer pieces shared by train.py and its tests: devices, learning-rate schedule, trainer state, resume.

Checkpoint files for epoch E under ``prefix`` (all written atomically, in this order):

* ``prefix-symbol.json`` + ``prefix-EEEE.params``: the network cut at ``fc1_output`` (what inference loads);
* ``prefix-EEEE.states``: the optimizer's state (momentum / Adam moments), from ``Module.save_optimizer_states``;
* ``prefix-EEEE.trainer.json``: epoch, global step, learning-rate schedule, best epoch so far. Written last,
  so its presence marks epoch E as complete and resumable. Under ``dist_async`` the optimizer state lives on
  the parameter servers and is not saved; the trainer state then says ``"optimizer_states": false``.

Distributed training (kvstore ``dist_*``): every worker reads its own part of the pack, runs the same number
of batches per epoch (``dist_steps_per_epoch``), starts from rank 0's weights (``broadcast_params``) and,
under ``dist_sync``, applies the same update to the same summed gradient, so all workers hold identical
weights after every step.
"""
import glob
import json
import math
import os
import pickle
import re
from typing import NamedTuple

import mxnet as mx
import numpy as np
# from the submodule: a dist_async server unpickles LRSchedule while `import mxnet` is still running
from mxnet.lr_scheduler import LRScheduler

from .checkpoint import _atomic_write, checkpoint_paths, load_checkpoint
from .errors import CheckpointError
from .files import write_json

STATE_VERSION = 1


def get_devices(gpus=None, environ=None, cpus=0):
    """Contexts to train on: ``gpus`` "0,1" if given, else ``$CUDA_VISIBLE_DEVICES``, else the CPU.

    ``cpus`` > 0 gives that many CPU contexts cpu(0), cpu(1), ... instead: each batch is split over them
    exactly as over several GPUs, which lets the multi-device code run (and be tested) without GPUs.

    The environment variable lists devices the process sees renumbered from 0, so "2,3" gives gpu(0), gpu(1).
    An explicit ``gpus`` that this MXNet build cannot see raises ValueError; a listed environment variable
    on a machine (or build) without GPUs falls back to the CPU.
    """
    if cpus > 0:
        return [mx.cpu(i) for i in range(cpus)]
    environ = os.environ if environ is None else environ
    available = _num_gpus()
    if gpus is not None and str(gpus).strip() not in ("", "-1"):
        try:
            ids = [int(x) for x in str(gpus).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--gpus {gpus}: expected GPU ids such as '0' or '0,1'") from None
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


class LRSchedule(LRScheduler):
    """Learning rate as a pure function of the global step (so a resumed run continues it exactly).

    ``mode="step"``: ``base_lr * factor ** (number of steps in lr_steps already passed)``;
    ``mode="cosine"``: ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t)) / 2`` over ``total_steps``.
    Both start with ``warmup`` steps rising linearly from ``base_lr / warmup`` to ``base_lr``.

    ``updates_per_step`` (not part of ``to_dict``: it belongs to the run, not the schedule) is how many
    optimizer updates one training step makes; under ``dist_async`` the servers update once per worker push,
    so it is the number of workers and the schedule still follows each worker's step count.
    """

    def __init__(self, base_lr, total_steps, mode="step", lr_steps=(), factor=0.1, warmup=0, final_lr=0.0,
                 updates_per_step=1):
        super().__init__(base_lr=base_lr)
        self.updates_per_step = max(int(updates_per_step), 1)
        if mode not in ("step", "cosine"):
            raise ValueError(f"unknown learning-rate schedule '{mode}' (step or cosine)")
        self.mode, self.total_steps = mode, max(int(total_steps), 1)
        self.lr_steps, self.factor = sorted(int(s) for s in lr_steps), float(factor)
        self.warmup, self.final_lr = max(int(warmup), 0), float(final_lr)

    def __call__(self, num_update):
        num_update //= self.updates_per_step
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


def save_trainer_state(prefix, epoch, module, state, optimizer_states=True):
    """Write the optimizer states of ``module`` and the ``state`` dict for ``epoch`` (atomically, state last).

    ``optimizer_states=False`` (the optimizer runs on parameter servers) writes the state dict only, marked so.
    """
    states_path, state_path = state_paths(prefix, epoch)
    if optimizer_states:
        _atomic_write(states_path, module.save_optimizer_states)
    body = dict(state, version=STATE_VERSION, epoch=int(epoch), optimizer_states=bool(optimizer_states))
    _atomic_write(state_path, lambda tmp: write_json(tmp, body, indent=1, sort_keys=True))
    return state_path


class _StatesUnpickler(pickle.Unpickler):
    """Unpickler that builds only MXNet NDArrays and plain containers: a states file cannot run code."""

    ALLOWED = {("mxnet.ndarray.ndarray", "NDArray"), ("builtins", "bytearray")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which an optimizer state never holds")
        return super().find_class(module, name)


def check_optimizer_states(path):
    """Raise CheckpointError unless ``path`` is an optimizer state pickle holding nothing but arrays.

    MXNet stores optimizer states as a pickle; loading one from an untrusted file would run any code it
    names, so the file is read with an unpickler that only allows NDArrays and containers.
    """
    try:
        with open(path, "rb") as f:
            _StatesUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a valid optimizer state file ({exc})") from None


def load_optimizer_states(module, path):
    """Restore ``module``'s optimizer state from ``path`` after :func:`check_optimizer_states`."""
    check_optimizer_states(path)
    module.load_optimizer_states(path)


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
    if not all(isinstance(state[k], int) and state[k] >= 0 for k in ("epoch", "global_step")):
        raise CheckpointError(f"{state_path}: epoch/global_step are not whole numbers")
    try:
        LRSchedule.from_dict(state["schedule"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{state_path}: learning-rate schedule cannot be read ({exc})") from None
    return state


def _saved_epochs(prefix):
    """Epochs under ``prefix`` that have a trainer state file, newest first."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.trainer\.json$")
    epochs = []
    for path in glob.glob(glob.escape(prefix) + "-*.trainer.json"):
        match = pattern.search(os.path.basename(path))
        if match:
            epochs.append(int(match.group(1)))
    return sorted(epochs, reverse=True)


def find_resume_epoch(prefix):
    """Last epoch under ``prefix`` whose params, symbol, optimizer states and trainer state all exist, or None.

    The optimizer states are not needed where the trainer state says they were not saved (``dist_async``).
    """
    for epoch in _saved_epochs(prefix):
        if not _missing_files(prefix, epoch):
            return epoch
    return None


def _missing_files(prefix, epoch):
    state_path = state_paths(prefix, epoch)[1]
    needed = list(checkpoint_paths(prefix, epoch))
    if _saved_optimizer_states(state_path):
        needed.append(state_paths(prefix, epoch)[0])
    return [p for p in needed if not os.path.isfile(p)]


class ResumePoint(NamedTuple):
    """A saved epoch that loads completely: its trainer state and parameters."""
    epoch: int
    state: dict
    arg_params: dict
    aux_params: dict


def load_resume_point(prefix, warn=None):
    """The newest saved epoch under ``prefix`` whose every file loads, as a ResumePoint; None if none was saved.

    An epoch counts as saved once its trainer state file exists (written last). A newer saved epoch whose
    files are missing or unreadable (truncated params, a bad trainer state, a broken optimizer state) is
    passed over, with ``warn(message)`` naming the file and the problem; if no saved epoch loads, the
    CheckpointError of the newest one is raised.
    """
    first_error = None
    for epoch in _saved_epochs(prefix):
        try:
            missing = _missing_files(prefix, epoch)
            if missing:
                raise CheckpointError(f"{missing[0]}: not found, epoch {epoch} is incomplete")
            state = load_trainer_state(prefix, epoch)
            if state.get("epoch") != epoch:
                raise CheckpointError(f"{state_paths(prefix, epoch)[1]}: says epoch {state.get('epoch')!r}, "
                                      f"not {epoch}")
            _, arg_params, aux_params = load_checkpoint(prefix, epoch)
            if _saved_optimizer_states(state_paths(prefix, epoch)[1]):
                check_optimizer_states(state_paths(prefix, epoch)[0])
        except CheckpointError as exc:
            first_error = first_error or exc
            if warn:
                warn(f"--resume: epoch {epoch} cannot be used: {exc}")
            continue
        return ResumePoint(epoch, state, arg_params, aux_params)
    if first_error is not None:
        raise CheckpointError(f"--resume: no saved epoch under {prefix} can be loaded; newest: {first_error}")
    return None


def _saved_optimizer_states(state_path):
    try:
        with open(state_path, "r", encoding="utf-8") as f:
            return json.load(f).get("optimizer_states", True) is not False
    except (OSError, ValueError, AttributeError):
        return True     # unreadable: demand the states file, so a broken epoch is not picked


def dist_steps_per_epoch(num_records, batch_size, num_workers):
    """Batches per epoch that every one of ``num_workers`` parts of ``num_records`` can fill.

    Worker ``k`` reads records k, k + W, k + 2W, ... so the parts differ by at most one record; all workers
    run the smallest part's batch count (a worker that ran more would wait forever at the next sync point).
    """
    return max(math.ceil((num_records // num_workers) / batch_size), 1)


def broadcast_params(module, kvstore):
    """Give every worker rank 0's weights: ``kvstore.init`` stores rank 0's values, pulled here by all."""
    arg_params, aux_params = module.get_params()
    pulled = {}
    for name in sorted(arg_params):
        pulled[name] = mx.nd.zeros(arg_params[name].shape, dtype=arg_params[name].dtype)
        kvstore.pull(name, out=pulled[name])
    module.set_params(pulled, aux_params)


AUX_KEY_PREFIX = "aux:"


def settled_aux_params(module):
    """The BatchNorm moving statistics after every step queued so far, copied from the devices.

    MXNet's CPU BatchNorm updates its moving statistics inside the *backward* operator, which declares them
    as inputs only: the engine does not order later reads after that write. A copy queued right after a
    step (``Module.get_params``, an inference forward) can therefore read the statistics of one or more
    steps earlier, by an amount that depends on thread timing. Wait for all queued work first, and copy
    again even when ``Module`` believes its cached copy is current (a copy taken mid-step cleared its flag).
    """
    mx.nd.waitall()
    module._params_dirty = True     # Module's own cache flag; no public way to ask for a fresh copy
    return module.get_params()[1]


def init_aux_keys(module, kvstore):
    """Register the BatchNorm moving statistics in ``kvstore`` so ``average_aux_params`` can reduce them."""
    for name, value in sorted(settled_aux_params(module).items()):
        kvstore.init(AUX_KEY_PREFIX + name, value.copy())


def average_aux_params(module, kvstore, num_workers):
    """The mean over the workers of the BatchNorm moving statistics (a ``dist_sync`` store sums pushes).

    Each worker's statistics follow its own part of the data, as each device's do in one process; their
    mean is what a checkpoint holds, as ``Module.get_params`` averages them across devices. The workers'
    own statistics are left as they are (as the devices' are). Every worker must call this at the same step.
    """
    aux_params = settled_aux_params(module)
    averaged = {}
    for name in sorted(aux_params):
        total = mx.nd.zeros(aux_params[name].shape, dtype=aux_params[name].dtype)
        # a copy: on the CPU the dist kvstore keeps the pushed array as its buffer and pulls into it
        kvstore.push(AUX_KEY_PREFIX + name, aux_params[name].copy())
        kvstore.pull(AUX_KEY_PREFIX + name, out=total)
        averaged[name] = total / num_workers
    return averaged


def initializer_for(network):
    """The original's initialiser: Xavier gaussian for ResNets, uniform for MobileNets."""
    if network[0] in "ry":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    if network[0] in "ix":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
    return mx.init.Xavier(rnd_type="uniform", factor_type="in", magnitude=2)


def balanced_sample_weights(ages, races, power, top_decade=8):
    """Sampling weights (sum 1) of ``1 / n**power`` per face, ``n`` the size of its (age decade, race) group.

    Ages of ``top_decade`` decades and more form one group (few faces are that old); a race of None is a
    group of its own. ``power`` 0 gives uniform weights, 1 equal total weight for every group.
    """
    decades = np.minimum(np.asarray(ages, dtype=np.int64) // 10, top_decade)
    keys = [(int(d), -1 if r is None else int(r)) for d, r in zip(decades, races)]
    counts = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    weights = np.array([counts[key] ** -float(power) for key in keys])
    return weights / weights.sum()
