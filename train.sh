#!/usr/bin/env bash
# Train the project's shipped age/gender model (MobileNet m1, width 0.25) on UTKFace, on the CPU.
#
#   ./train.sh                 # prepare the packs if needed, then train
#   ./train.sh --resume        # continue an interrupted run (extra arguments go to train.py)
#
# Settings through the environment: SHARED (the shared data folder, default ../shared), DATA (packs),
# PREFIX (checkpoints; the log is $PREFIX.log), PYTHON, OMP_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")"

SHARED=${SHARED:-${AGEGENDER_SHARED:-../shared}}
DATA=${DATA:-work-data/utkface}
PREFIX=${PREFIX:-runs/m1-utkface/model}
PYTHON=${PYTHON:-.venv/bin/python}

# One OpenMP thread per process: on a 2-core machine shared with other work, training measured
# ~2.5x faster with 1 thread than with 2 (the threads spin-wait on each other). Raise it on a
# dedicated many-core machine. Images are decoded in the iterator's own thread.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-1}

# Packs of MTCNN-aligned 112x112 faces; labels.csv's split column gives train (18,960) / val (2,439).
if [ ! -f "$DATA/train.rec" ] || [ ! -f "$DATA/val.rec" ]; then
    "$PYTHON" -m data.prepare "$SHARED/data/utkface/labels.csv" --out "$DATA"
fi

# The shipped model's recipe (models/MODEL_CARD.md): MobileNet m1 x0.25 with a stride-2 first convolution
# (--version-input 0, 4x less computation than the original's layout), GAP head; SGD momentum 0.9; gender
# loss weighted 10x against the 100 ordinal age losses; flips, light colour jitter, scale/shift jitter.
# It ran in two stages because the first schedule (cosine over 45 epochs) would not have finished in the
# time available: stage 1 is that schedule stopped after 7 epochs (1036 batches), stage 2 warm-starts from
# it with a fresh cosine schedule from lr 0.08 over 22 epochs, ending at lr 0. Take stage 2's last epoch:
# at lr 0 the inference-mode BatchNorm statistics match the weights. Progress and per-epoch val metrics go
# to stdout and $PREFIX*.log; a checkpoint is saved after every epoch (./train.sh --resume continues stage 2).
COMMON=(--data-dir "$DATA" --network m1 --multiplier 0.25 --version-input 0 --version-output GAP
        --per-batch-size 128 --optimizer sgd --mom 0.9 --wd 0.0005 --lr-schedule cosine
        --gender-weight 10 --age-smoothing 0 --rand-mirror 1 --color 1 --rand-crop 0.1 --cutoff 0)
if [ ! -f "$PREFIX-stage1-0007.params" ]; then
    "$PYTHON" -u train.py "${COMMON[@]}" --prefix "$PREFIX-stage1" \
        --end-epoch 45 --lr 0.1 --warmup 300 --max-steps 1036 --seed 1
fi
"$PYTHON" -u train.py "${COMMON[@]}" --prefix "$PREFIX" --pretrained "$PREFIX-stage1,7" \
    --end-epoch 22 --lr 0.08 --warmup 0 --seed 2 "$@"
