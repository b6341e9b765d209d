"""Train the age/gender network on RecordIO packs of aligned faces (the original's recipe, bugs fixed).

Example (the shipped model's architecture, on the CPU):

    python train.py --data-dir work-data/utkface --prefix runs/m1/model --network m1 --multiplier 0.25 \
        --end-epoch 30 --lr 0.1 --lr-schedule cosine --warmup 500

Reads ``<data-dir>/train.rec`` (and ``val.rec`` if present, evaluated after every epoch in inference mode).
Writes ``<prefix>-symbol.json`` (cut at fc1_output) and ``<prefix>-EEEE.params`` for epochs 1, 2, ...,
plus the optimizer and trainer state that ``--resume`` continues from. Devices: ``--gpus 0,1``, else
``$CUDA_VISIBLE_DEVICES``, else the CPU. CPU speed: set ``OMP_NUM_THREADS`` to the number of cores
(``MXNET_CPU_WORKER_NTHREADS`` 1 or 2 is enough; images are decoded in the iterator's own thread).

Batch size and learning rate: one step takes ``--per-batch-size`` faces on each device, so a worker's batch
is per-batch-size x devices and, with ``--kvstore dist_sync``/``dist_device_sync``, the total batch of a step
is that x workers; gradients are averaged over all of them, so ``--lr`` is the rate of the total batch (scale
it with the total batch as usual). With ``dist_async`` every worker's push is one update of its own batch.
Distributed runs are started by ``tools/launch.py`` (see README); only rank 0 validates and saves.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings

import mxnet as mx
import numpy as np

import symbols
from agegender import config
from agegender.checkpoint import (check_params_match, checkpoint_paths, load_checkpoint, parse_model_spec,
                                  save_checkpoint)
from agegender.errors import AgeGenderError, UsageParser
from agegender.cli import EXIT_INTERRUPTED, EXIT_OK, add_image_size_option, run_main
from agegender.files import print_error
from agegender.losses import get_loss_symbol
from agegender.metrics import AgeGenderMetric
from agegender.training import (LRSchedule, average_aux_params, balanced_sample_weights, broadcast_params,
                                default_lr_steps,
                                dist_steps_per_epoch, get_devices, init_aux_keys, initializer_for, load_optimizer_states,
                                load_resume_point, parse_lr_steps, save_trainer_state, settled_aux_params, state_paths)
from data.iterator import FaceImageIter
from data.records import PackReader
from symbols.pretrained import backbone_params

log = logging.getLogger("train")
KVSTORES = ("local", "device", "dist_sync", "dist_device_sync", "dist_async")


def parse_args(argv=None):
    """Command-line options (the original's, plus the trainer's own; see README)."""
    p = UsageParser(description="Train the age/gender network.",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with train.rec/.idx and optionally val.rec/.idx")
    p.add_argument("--prefix", default="runs/model/model", help="checkpoint prefix (its folder is created)")
    p.add_argument("--pretrained", default="", help="'prefix,epoch' to warm-start from (missing layers initialised)")
    p.add_argument("--pretrained-backbone", default="",
                   help="'prefix,epoch' of a RetinaFace MobileNet-0.25 detector (e.g. models/retinaface/"
                        "retinaface-mnet25,0): start the 27 backbone blocks from its face-trained weights, the head "
                        "fresh; needs --network m1 --multiplier 0.25 --version-input 0 --version-body retinaface")
    p.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="learning rate of the 27 backbone blocks relative to --lr (the head always gets 1)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint under --prefix (same schedule, optimizer state)")
    p.add_argument("--ckpt", type=int, default=1, choices=(0, 1, 2),
                   help="0: never save; 1 or 2: save after every epoch and when stopping")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop (and save) after this many batches in all; the schedule still spans --end-epoch (0: off)")
    p.add_argument("--end-epoch", type=int, default=30, help="last epoch (epochs are numbered from 1)")
    p.add_argument("--network", default="m1", help="m1 (MobileNet) or r<depth> (ResNet)")
    add_image_size_option(p, help="square input size 'H,W'")
    p.add_argument("--version-input", type=int, default=1)
    p.add_argument("--version-output", default="GAP", help="head type (GAP, E, GDC, ...)")
    p.add_argument("--version-act", default="prelu", help="activation of the head")
    p.add_argument("--version-body", default="original", choices=symbols.MOBILENET_BODIES,
                   help="MobileNet blocks: the original's (ReLU, fixed-gamma BatchNorm) or the RetinaFace "
                        "backbone's (LeakyReLU 0.1, learned gamma, mean-subtracted input)")
    p.add_argument("--multiplier", type=float, default=0.25, help="MobileNet width multiplier")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "nadam"))
    p.add_argument("--lr", type=float, default=0.1, help="base learning rate")
    p.add_argument("--lr-schedule", default="step", choices=("step", "cosine"))
    p.add_argument("--lr-steps", default="",
                   help="global batch counts at which the lr is divided by 10 (empty: 50%% and 75%% of the run)")
    p.add_argument("--warmup", type=int, default=0, help="batches of linear learning-rate warm-up")
    p.add_argument("--wd", type=float, default=0.0005, help="weight decay")
    p.add_argument("--mom", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--per-batch-size", type=int, default=128, help="batch per device (0: 128)")
    p.add_argument("--rand-mirror", type=int, default=1, help="random horizontal flips (1) or not (0)")
    p.add_argument("--cutoff", type=int, default=0, help="cutout square size (0: off)")
    p.add_argument("--color", type=int, default=0, help="colour jitter: 1 brightness/contrast/saturation, 2 + JPEG")
    p.add_argument("--rand-crop", type=float, default=0.0, help="random scale/shift jitter amount (0: off)")
    p.add_argument("--gender-weight", type=float, default=10.0,
                   help="weight of the gender loss against the sum of the 100 age losses")
    p.add_argument("--age-smoothing", type=float, default=0.0, help="label smoothing of the ordinal age targets")
    p.add_argument("--age-sigma", type=float, default=0.0,
                   help="soft ordinal targets P(age > k) for a Gaussian of this many years around the label "
                        "(0: the hard 0/1 targets)")
    p.add_argument("--balance", type=float, default=0.0,
                   help="draw each epoch's faces with weight 1/n^B, n the faces of their (age decade, race) "
                        "group (race from the pack's .meta.csv): 0 = plain shuffle, 1 = fully balanced")
    p.add_argument("--gpus", default=None, help="GPU ids '0,1' (default: $CUDA_VISIBLE_DEVICES, else CPU)")
    p.add_argument("--cpus", type=int, default=0,
                   help="split each batch over this many CPU contexts (tests the multi-device path without GPUs)")
    p.add_argument("--kvstore", default="device", choices=KVSTORES,
                   help="gradient reduction: local/device in one process, dist_* across processes (tools/launch.py)")
    p.add_argument("--shuffle", type=int, default=1, help="reshuffle the training faces every epoch (1) or not (0)")
    p.add_argument("--frequent", type=int, default=20, help="log a progress line every this many batches")
    p.add_argument("--log", default="", help="log file (default: <prefix>.log)")
    p.add_argument("--seed", type=int, default=None, help="random seed (shuffling, augmentation, initialisation)")
    # test hook: per-step parameter digests and final parameters of each worker, written to this folder
    p.add_argument("--trace-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.per_batch_size <= 0:
        args.per_batch_size = 128
    try:
        size = [int(x) for x in args.image_size.split(",")]
    except ValueError:
        size = []
    if len(size) != 2 or size[0] != size[1] or size[0] < 1:
        p.error(f"--image-size {args.image_size}: must be a square size 'S,S' with S >= 1")
    args.data_shape = (3, size[0], size[1])
    for name in ("lr", "wd", "mom", "multiplier", "rand_crop", "gender_weight", "age_smoothing", "age_sigma",
                 "balance", "backbone_lr_mult"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name in ("lr", "multiplier") and value == 0):
            p.error(f"--{name.replace('_', '-')} {value}: must be a finite number "
                    f"{'above' if name in ('lr', 'multiplier') else 'of at least'} 0")
    for name, least in (("end_epoch", 1), ("frequent", 1), ("warmup", 0), ("max_steps", 0), ("cutoff", 0),
                        ("cpus", 0)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}")
    try:
        args.lr_step_list = parse_lr_steps(args.lr_steps)
    except ValueError:
        p.error(f"--lr-steps {args.lr_steps}: expected whole numbers of batches separated by commas")
    if any(step < 1 for step in args.lr_step_list):
        p.error(f"--lr-steps {args.lr_steps}: steps must be at least 1")
    try:
        symbols.parse_network(args.network)
    except ValueError as exc:
        p.error(f"--network: {exc}")
    try:
        fc1 = network_symbol(args)
        fc1.infer_shape(data=(1,) + args.data_shape)
    except (ValueError, mx.base.MXNetError) as exc:
        p.error(f"--image-size {args.image_size}: network {args.network} cannot take {size[0]}x{size[1]} faces "
                f"({str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else type(exc).__name__})")
    if args.cpus and args.gpus:
        p.error("--cpus and --gpus exclude each other")
    if args.gpus is not None and str(args.gpus).strip() not in ("", "-1"):
        try:
            get_devices(args.gpus)
        except ValueError as exc:
            p.error(str(exc))
    if len(args.data_dir.split(",")) != 1:
        p.error("--data-dir: give one folder")
    if args.pretrained_backbone:
        try:
            parse_model_spec(args.pretrained_backbone)
        except AgeGenderError as exc:
            p.error(f"--pretrained-backbone: {exc}")
        if (symbols.parse_network(args.network) != ("mobilenet", 1) or args.multiplier != 0.25
                or args.version_input != 0 or args.version_body != "retinaface"):
            p.error("--pretrained-backbone needs --network m1 --multiplier 0.25 --version-input 0 "
                    "--version-body retinaface (the detector backbone's layout)")
    if args.balance > 1:
        p.error(f"--balance {args.balance}: must be between 0 and 1")
    return args


def network_symbol(args):
    """The fc1 symbol of the network ``args`` describe."""
    return symbols.get_symbol(args.network, num_classes=config.FC1_SIZE, multiplier=args.multiplier,
                              version_input=args.version_input, version_output=args.version_output,
                              version_act=args.version_act, version_body=args.version_body)


def setup_logging(path):
    """Log to stdout and to ``path`` (appending, so a resumed run continues the same file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(path)):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def format_metrics(values):
    """One-line text of a metrics dict."""
    def fmt(key, spec):
        value = values.get(key)
        return f"{key} {value:{spec}}" if value is not None else f"{key} -"
    return " ".join([fmt("gender_loss", ".4f"), fmt("age_loss", ".3f"), fmt("gender_acc", ".4f"),
                     fmt("mae", ".3f"), fmt("cs5", ".4f"), fmt("mae_expected", ".3f")])


def evaluate(module, data_iter):
    """Inference-mode pass over ``data_iter`` (BatchNorm uses its moving statistics); returns metrics."""
    settled_aux_params(module)      # the last training step's moving statistics, not an earlier one's
    metric = AgeGenderMetric()
    data_iter.reset()
    for batch in data_iter:
        module.forward(batch, is_train=False)
        metric.update(batch.label[0].asnumpy(), module.get_outputs()[2].asnumpy(), batch.pad)
    return metric.get()


def build_module(args, devices):
    """The training symbol (fc1 + loss heads) in a Module, and the bare fc1 symbol that checkpoints hold."""
    fc1 = network_symbol(args)
    train_sym = get_loss_symbol(fc1, gender_weight=args.gender_weight, age_smoothing=args.age_smoothing,
                                age_sigma=args.age_sigma)
    module = mx.mod.Module(train_sym, data_names=["data"], label_names=["softmax_label"], context=devices)
    return module, fc1


def make_optimizer(args, schedule, begin_step, num_replicas):
    """SGD (momentum) / Adam / Nadam with the schedule, continuing from global step ``begin_step``.

    The loss heads average over each device's batch, so gradients summed over ``num_replicas``
    (devices x synchronous workers) are divided by that number. ``--backbone-lr-mult`` scales the
    learning rate of MobileNet's 27 blocks.
    """
    common = dict(learning_rate=schedule.base_lr, wd=args.wd, lr_scheduler=schedule,
                  rescale_grad=1.0 / num_replicas, begin_num_update=begin_step)
    if args.optimizer == "sgd":
        optimizer = mx.optimizer.create("sgd", momentum=args.mom, **common)
    else:
        optimizer = mx.optimizer.create(args.optimizer, **common)
    if args.backbone_lr_mult != 1.0:
        blocks = set(symbols.mobilenet_block_names())
        names = [name for name in network_symbol(args).list_arguments()
                 if name.rsplit("_", 2)[0] in blocks]
        optimizer.set_lr_mult({name: args.backbone_lr_mult for name in names})
    return optimizer


def pretrained_backbone(spec, train_rec, data_shape, num_faces=512):
    """Backbone weights from a RetinaFace detector checkpoint, BatchNorms measured on training faces."""
    prefix, epoch = parse_model_spec(spec)
    faces = []
    sample = FaceImageIter(train_rec, 128, data_shape=data_shape)
    try:
        for batch in sample:
            faces.append(batch.data[0].asnumpy()[:128 - batch.pad])
            if sum(len(f) for f in faces) >= num_faces:
                break
    finally:
        sample.close()
    arg_params, aux_params = backbone_params(prefix, epoch, np.concatenate(faces)[:num_faces])
    log.info("backbone from %s: %d arrays (BatchNorm statistics from %d training faces)", spec,
             len(arg_params) + len(aux_params), min(num_faces, sum(len(f) for f in faces)))
    return arg_params, aux_params


def balance_weights(train_rec, power):
    """Per-record sampling weights 1/n^power over (age decade, race) groups; race from the pack's sidecar."""
    reader = PackReader(train_rec)
    try:
        meta = reader.read_meta()
        ages = reader.labels[:, 1]
    finally:
        reader.close()
    races = meta["race"] if meta else [None] * len(ages)
    if not meta:
        log.warning("--balance: %s has no .meta.csv sidecar (race); balancing over age decades only", train_rec)
    return balanced_sample_weights(ages, races, power)


class Cluster:
    """The kvstore of a run and this process's place in it (``num_workers`` 1, ``rank`` 0 outside dist_*).

    ``sync``: dist_sync/dist_device_sync. Their servers only sum the workers' gradients; every worker runs
    the optimizer itself on the sum (MXNET_UPDATE_ON_KVSTORE=0), so optimizer states are local and checkpoints
    resume exactly. Under dist_async the servers run the optimizer, as asynchronous SGD requires.
    """

    def __init__(self, kvstore):
        self.distributed = kvstore.startswith("dist")
        self.sync = self.distributed and kvstore.endswith("_sync")
        self.store = mx.kvstore.create(kvstore) if self.distributed else kvstore
        self.num_workers = self.store.num_workers if self.distributed else 1
        self.rank = self.store.rank if self.distributed else 0

    def init_optimizer(self, module, optimizer):
        """``module.init_optimizer`` on this kvstore, with local updates under dist_sync."""
        saved = os.environ.get("MXNET_UPDATE_ON_KVSTORE")
        if self.sync:
            os.environ["MXNET_UPDATE_ON_KVSTORE"] = "0"
        try:
            with warnings.catch_warnings():
                # The loss heads already average over each device's batch, so rescale_grad is 1/#replicas,
                # not the 1/batch_size Module expects and warns about.
                warnings.filterwarnings("ignore", message="Optimizer created manually")
                module.init_optimizer(kvstore=self.store, optimizer=optimizer)
        finally:
            if saved is None:
                os.environ.pop("MXNET_UPDATE_ON_KVSTORE", None)
            else:
                os.environ["MXNET_UPDATE_ON_KVSTORE"] = saved
        if self.sync:
            broadcast_params(module, self.store)
            init_aux_keys(module, self.store)

    def aux_params(self, module):
        """The BatchNorm statistics a checkpoint holds: under dist_sync their mean over the workers."""
        if self.sync and self.num_workers > 1:
            return average_aux_params(module, self.store, self.num_workers)
        return settled_aux_params(module)


class ParamTrace:
    """Test hook (``--trace-dir``): a digest of the weights after every step, and the final parameters."""

    def __init__(self, folder, rank):
        os.makedirs(folder, exist_ok=True)
        self.stem = os.path.join(folder, f"rank{rank}")
        open(self.stem + ".jsonl", "w").close()

    def step(self, module, global_step):
        arg_params = module.get_params()[0]
        digest = hashlib.sha1()
        for name in sorted(arg_params):
            digest.update(arg_params[name].asnumpy().tobytes())
        with open(self.stem + ".jsonl", "a") as f:
            f.write(json.dumps({"step": global_step, "sha1": digest.hexdigest()}) + "\n")

    def finish(self, module):
        arg_params, aux_params = module.get_params()
        mx.nd.save(self.stem + ".params", {**{"arg:" + k: v for k, v in arg_params.items()},
                                           **{"aux:" + k: v for k, v in aux_params.items()}})


def train(args):
    """Run the training described by ``args``; returns the summary dict (best epoch, last epoch, steps)."""
    prefix = args.prefix
    cluster = Cluster(args.kvstore)
    rank = cluster.rank
    log_path = args.log or prefix + ".log"
    setup_logging(log_path if rank == 0 else f"{os.path.splitext(log_path)[0]}.rank{rank}.log")
    devices = get_devices(args.gpus, cpus=args.cpus)
    batch_size = args.per_batch_size * len(devices)
    sync_workers = cluster.num_workers if cluster.sync else 1
    log.info("command: %s", " ".join(sys.argv))
    log.info("devices %s, batch %d (%d per device); OMP_NUM_THREADS=%s MXNET_CPU_WORKER_NTHREADS=%s", devices,
             batch_size, args.per_batch_size, os.environ.get("OMP_NUM_THREADS"),
             os.environ.get("MXNET_CPU_WORKER_NTHREADS"))
    if cluster.distributed:
        log.info("kvstore %s: worker %d of %d; batch %d per worker, %d per step in total; lr %g %s", args.kvstore,
                 rank, cluster.num_workers, batch_size, batch_size * sync_workers, args.lr,
                 "for the total batch (gradients averaged over all workers)" if cluster.sync
                 else "for each worker's batch (every push is one update on the servers)")
    if args.seed is not None:
        mx.random.seed(args.seed)
        np.random.seed(args.seed)

    train_rec = os.path.join(args.data_dir, "train.rec")
    val_rec = os.path.join(args.data_dir, "val.rec")
    # each distributed worker reads every num_workers-th face, starting at its rank
    train_iter = FaceImageIter(train_rec, batch_size, data_shape=args.data_shape, shuffle=bool(args.shuffle),
                               num_parts=cluster.num_workers, part_index=rank,
                               rand_mirror=bool(args.rand_mirror), color_jitter=args.color, cutoff=args.cutoff,
                               rand_crop=args.rand_crop, seed=args.seed,
                               sample_weights=balance_weights(train_rec, args.balance) if args.balance else None)
    val_iter = (FaceImageIter(val_rec, batch_size, data_shape=args.data_shape)
                if rank == 0 and os.path.isfile(val_rec) else None)
    steps_per_epoch = dist_steps_per_epoch(len(train_iter.reader), batch_size, cluster.num_workers)
    log.info("train %s: %d faces, %d batches per epoch; val: %s", train_rec, train_iter.num_samples,
             steps_per_epoch, f"{val_iter.num_samples} faces" if val_iter else "none")

    module, fc1 = build_module(args, devices)
    module.bind(data_shapes=train_iter.provide_data, label_shapes=train_iter.provide_label)

    epoch, global_step, best = 0, 0, None
    resume = load_resume_point(prefix, warn=log.warning) if args.resume else None
    resume_epoch = resume.epoch if resume else None
    if args.resume and resume is None:
        log.info("--resume: no saved epoch under %s, starting from scratch", prefix)
    if resume is not None:
        state = resume.state
        check_params_match(module.symbol, resume.arg_params, resume.aux_params,
                           dict(train_iter.provide_data + train_iter.provide_label),
                           checkpoint_paths(prefix, resume_epoch)[1])
        module.init_params(arg_params=resume.arg_params, aux_params=resume.aux_params, allow_missing=False)
        epoch, global_step, best = state["epoch"], state["global_step"], state.get("best")
        schedule = LRSchedule.from_dict(state["schedule"])
        log.info("resuming from %s-%04d: epoch %d done, global step %d", prefix, epoch, epoch, global_step)
    else:
        arg_params = aux_params = None
        if args.pretrained_backbone:
            arg_params, aux_params = pretrained_backbone(args.pretrained_backbone, train_rec, args.data_shape)
        if args.pretrained:
            pre_prefix, pre_epoch = parse_model_spec(args.pretrained)
            _, arg_params, aux_params = load_checkpoint(pre_prefix, pre_epoch)
            wanted = set(module._param_names) | set(module._aux_names)
            missing = sorted(wanted - set(arg_params) - set(aux_params))
            log.info("warm start from %s: %d of %d arrays loaded, initialised: %s", args.pretrained,
                     len(wanted) - len(missing), len(wanted), ", ".join(missing) or "none")
        module.init_params(initializer=initializer_for(args.network), arg_params=arg_params, aux_params=aux_params,
                           allow_missing=True, allow_extra=True)
        # --max-steps stops the run early, as in the original; the schedule still spans --end-epoch
        total_steps = args.end_epoch * steps_per_epoch
        lr_steps = args.lr_step_list
        if args.lr_schedule == "step" and not lr_steps:
            lr_steps = default_lr_steps(total_steps)
        schedule = LRSchedule(args.lr, total_steps, mode=args.lr_schedule, lr_steps=lr_steps, warmup=args.warmup)
    log.info("schedule %s", schedule.to_dict())

    # dist_async servers count one update per worker push
    updates_per_step = 1 if cluster.sync or not cluster.distributed else cluster.num_workers
    schedule.updates_per_step = updates_per_step
    cluster.init_optimizer(module, make_optimizer(args, schedule, global_step * updates_per_step,
                                                  len(devices) * sync_workers))
    optimizer_states_local = not (cluster.distributed and not cluster.sync)
    if resume_epoch is not None:
        if optimizer_states_local and state.get("optimizer_states", True):
            load_optimizer_states(module, state_paths(prefix, resume_epoch)[0])
        else:
            log.info("optimizer state (momentum, moments) starts afresh: not saved or kept on dist_async servers")
    trace = ParamTrace(args.trace_dir, rank) if args.trace_dir else None

    metric = AgeGenderMetric()
    stop = args.max_steps > 0 and global_step >= args.max_steps
    while not stop and epoch < args.end_epoch:
        epoch += 1
        metric.reset()
        train_iter.reset()
        tic = window_tic = time.time()
        window_samples = 0
        for nbatch, batch in enumerate(train_iter, 1):
            module.forward_backward(batch)
            module.update()
            global_step += 1
            if trace:
                trace.step(module, global_step)
            metric.update(batch.label[0].asnumpy(), module.get_outputs()[2].asnumpy(), batch.pad)
            window_samples += batch_size - batch.pad
            if nbatch % args.frequent == 0 or nbatch == steps_per_epoch:
                speed = window_samples / max(time.time() - window_tic, 1e-9)
                log.info("Epoch[%d] Batch[%d/%d] step %d lr %.5g %.1f img/s %s", epoch, nbatch, steps_per_epoch,
                         global_step, schedule(global_step * updates_per_step), speed,
                         format_metrics(metric.get()))
                window_tic, window_samples = time.time(), 0
            if args.max_steps > 0 and global_step >= args.max_steps:
                stop = True
            if stop or nbatch == steps_per_epoch:
                break
        aux_params = cluster.aux_params(module) if args.ckpt else None    # all workers take part (dist_sync)
        train_metrics = metric.get()
        log.info("Epoch[%d] train %s (%.1f s)", epoch, format_metrics(train_metrics), time.time() - tic)
        val_metrics = evaluate(module, val_iter) if val_iter else None
        if val_metrics:
            log.info("Epoch[%d] val   %s gender_acc_by_gender %s", epoch, format_metrics(val_metrics),
                     val_metrics["gender_acc_by_gender"])
            if val_metrics["age_loss"] > 3 * train_metrics["age_loss"]:
                log.warning("Epoch[%d] val loss is far above train loss: inference-mode outputs (BatchNorm moving "
                            "statistics) lag the weights; expected in the first epochs, otherwise lower --lr or "
                            "raise --warmup", epoch)
            if best is None or val_metrics["mae"] < best["mae"]:
                best = {"epoch": epoch, "mae": val_metrics["mae"], "gender_acc": val_metrics["gender_acc"]}
        if args.ckpt and rank == 0:
            save_epoch(module, fc1, aux_params, prefix, epoch, global_step, schedule, best, train_metrics,
                       val_metrics, args, optimizer_states_local)
    if best:
        log.info("best epoch by val MAE: %d (MAE %.3f, gender acc %s) -> model %s,%d", best["epoch"], best["mae"],
                 best["gender_acc"], prefix, best["epoch"])
    if trace:
        trace.finish(module)
    train_iter.close()
    if val_iter:
        val_iter.close()
    return {"epoch": epoch, "global_step": global_step, "best": best}


def save_epoch(module, fc1, aux_params, prefix, epoch, global_step, schedule, best, train_metrics, val_metrics,
               args, optimizer_states=True):
    """Save the fc1 network with ``aux_params``, the optimizer states (unless held by dist_async servers)
    and the trainer state."""
    arg_params = module.get_params()[0]
    save_checkpoint(prefix, epoch, fc1, arg_params, aux_params)
    state = {"global_step": global_step, "schedule": schedule.to_dict(), "best": best,
             "train": _scalars(train_metrics), "val": _scalars(val_metrics) if val_metrics else None,
             "args": {k: v for k, v in vars(args).items() if k != "data_shape"}}
    save_trainer_state(prefix, epoch, module, state, optimizer_states=optimizer_states)
    log.info("saved %s-%04d.params", prefix, epoch)


def _scalars(values):
    return {k: v for k, v in values.items() if not isinstance(v, dict)}


def main(argv=None):
    return run_main(lambda: _main(argv))


def _main(argv):
    args = parse_args(argv)
    try:
        train(args)
    except KeyboardInterrupt:
        print_error(f"interrupted: the last saved epoch under {args.prefix} is kept; --resume continues from it")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
