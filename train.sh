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
# (--version-input 0, 4x less computation than the original's layout), GAP head; SGD momentum 0.9, weight
# decay 5e-4, batch 128; flips, light colour jitter, scale/shift jitter. Three stages, as it was trained:
#   1. cosine from lr 0.1 (300 warm-up batches) planned over 45 epochs, stopped after 7 (1036 batches)
#      when it became clear the plan would not finish in the time available;
#   2. warm start from stage 1, a fresh cosine from lr 0.08 over 22 epochs, gender loss weight 10;
#   3. warm start from stage 2, cosine from lr 0.02 over 12 epochs with the gender loss weighted 30
#      (gender accuracy lagged); the shipped model is epoch 10 of this stage, best on val.
# Progress and per-epoch val metrics go to stdout and $PREFIX-stage*.log; a checkpoint is saved after every
# epoch, and a finished stage is skipped when the script runs again (extra arguments, e.g. --resume, are
# passed to the stage that runs).
COMMON=(--data-dir "$DATA" --network m1 --multiplier 0.25 --version-input 0 --version-output GAP
        --per-batch-size 128 --optimizer sgd --mom 0.9 --wd 0.0005 --lr-schedule cosine --warmup 0
        --age-smoothing 0 --rand-mirror 1 --color 1 --rand-crop 0.1 --cutoff 0)
if [ ! -f "$PREFIX-stage1-0007.params" ]; then
    "$PYTHON" -u train.py "${COMMON[@]}" --prefix "$PREFIX-stage1" --end-epoch 45 --max-steps 1036 \
        --lr 0.1 --warmup 300 --gender-weight 10 --seed 1 "$@"
fi
if [ ! -f "$PREFIX-stage2-0022.params" ]; then
    "$PYTHON" -u train.py "${COMMON[@]}" --prefix "$PREFIX-stage2" --pretrained "$PREFIX-stage1,7" \
        --end-epoch 22 --lr 0.08 --gender-weight 10 --seed 2 "$@"
fi
if [ ! -f "$PREFIX-stage3-0012.params" ]; then
    "$PYTHON" -u train.py "${COMMON[@]}" --prefix "$PREFIX-stage3" --pretrained "$PREFIX-stage2,22" \
        --end-epoch 12 --lr 0.02 --gender-weight 30 --seed 3 "$@"
fi
"$PYTHON" eval.py --data "$DATA/val.rec" --model "$PREFIX-stage3,10" --json "$PREFIX-stage3-val.json"
echo "shipped as: cp $PREFIX-stage3-symbol.json models/agegender-m1-symbol.json;" \
     "cp $PREFIX-stage3-0010.params models/agegender-m1-0000.params"
