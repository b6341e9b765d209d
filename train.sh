#!/usr/bin/env bash
# Train the project's shipped age/gender model (MobileNet m1 x0.25 on a face-pretrained backbone) on UTKFace,
# on the CPU, then choose its test-time settings on val.
#
#   ./train.sh                 # prepare the packs if needed, then train (about 45 min on 2 idle cores)
#   ./train.sh --resume        # continue an interrupted run (extra arguments go to train.py)
#
# Settings through the environment: SHARED (the shared data folder, default ../shared), DATA (packs),
# PREFIX (checkpoints; the log is $PREFIX.log), PYTHON, OMP_NUM_THREADS. Needs `make models` (the
# RetinaFace weights whose backbone starts the network).
set -euo pipefail
cd "$(dirname "$0")"

SHARED=${SHARED:-${AGEGENDER_SHARED:-../shared}}
DATA=${DATA:-work-data/utkface}
PREFIX=${PREFIX:-runs/m1-utkface/model}
PYTHON=${PYTHON:-.venv/bin/python}
EPOCHS=50

# One OpenMP thread per process: on a 2-core machine shared with other work, training measured
# ~2.5x faster with 1 thread than with 2 (the threads spin-wait on each other). Raise it on a
# dedicated many-core machine. Images are decoded in the iterator's own thread.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-1}

# Packs of MTCNN-aligned 112x112 faces (+ race sidecars); labels.csv's split column gives train / val.
if [ ! -f "$DATA/train.rec" ] || [ ! -f "$DATA/val.rec" ]; then
    "$PYTHON" -m data.prepare "$SHARED/data/utkface/labels.csv" --out "$DATA"
fi

# The shipped model's recipe (models/MODEL_CARD.md, chosen by tools/recipe_search.sh): m1 x0.25 with a
# stride-2 stem and the RetinaFace body (LeakyReLU 0.1, learned-gamma BatchNorms), its 27 convolutions
# initialised from the default detector's backbone and trained at 0.1x the head's learning rate;
# GAP head; SGD momentum 0.9, weight decay 5e-4, batch 128, cosine from lr 0.1 after 100 warm-up batches;
# flips, light colour jitter, scale/shift jitter; gender loss weight 30. A checkpoint is saved after
# every epoch; a finished run is not trained again.
if [ ! -f "$PREFIX-$(printf %04d "$EPOCHS").params" ]; then
    "$PYTHON" -u train.py --data-dir "$DATA" --prefix "$PREFIX" --network m1 --multiplier 0.25 \
        --version-input 0 --version-output GAP --version-body retinaface \
        --pretrained-backbone models/retinaface/retinaface-mnet25,0 --backbone-lr-mult 0.1 \
        --per-batch-size 128 --optimizer sgd --mom 0.9 --wd 0.0005 \
        --lr-schedule cosine --lr 0.1 --warmup 100 --end-epoch "$EPOCHS" \
        --rand-mirror 1 --color 1 --rand-crop 0.1 --cutoff 0 --gender-weight 30 --seed 7 --resume "$@"
fi

# Test-time settings (age decoding, mirror averaging) chosen on val; written to $PREFIX-inference.json.
"$PYTHON" -m tools.choose_inference --model "$PREFIX,$EPOCHS" --data "$DATA/val.rec" --out "$PREFIX-choice"
"$PYTHON" eval.py --data "$DATA/val.rec" --model "$PREFIX,$EPOCHS" --json "$PREFIX-val.json"
echo "shipped as: cp $PREFIX-symbol.json models/agegender-m1-symbol.json;" \
     "cp $PREFIX-$(printf %04d "$EPOCHS").params models/agegender-m1-0000.params;" \
     "cp $PREFIX-inference.json models/agegender-m1-inference.json"
