#!/usr/bin/env bash
# The recipe search behind the shipped model (models/MODEL_CARD.md, "Recipe search"): short runs of equal
# length on the UTKFace train pack, each judged by eval.py on the val pack.
#
#   tools/recipe_search.sh            # every variant not yet evaluated, two at a time
#   LANES=1 tools/recipe_search.sh    # one at a time
#
# Settings through the environment: DATA (packs, default work-data/utkface), OUT (checkpoints and logs,
# default runs/recipe-search), RESULTS (eval JSONs, default models/recipe-search), EPOCHS (default 6),
# LANES (runs at once, default 2), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-work-data/utkface}
OUT=${OUT:-runs/recipe-search}
RESULTS=${RESULTS:-models/recipe-search}
EPOCHS=${EPOCHS:-6}
LANES=${LANES:-2}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-1}

BASE="--data-dir $DATA --network m1 --multiplier 0.25 --version-input 0 --version-output GAP
      --version-body retinaface --per-batch-size 128 --optimizer sgd --mom 0.9 --wd 0.0005
      --lr-schedule cosine --lr 0.1 --warmup 100 --end-epoch $EPOCHS --rand-mirror 1 --cutoff 0 --seed 7"
PRE="--pretrained-backbone models/retinaface/retinaface-mnet25,0"
AUG="--color 1 --rand-crop 0.1"

# name | what changes against the pretrained baseline
VARIANTS=(
    "scratch|$AUG --gender-weight 10"
    "pretrained|$PRE $AUG --gender-weight 10"
    "pretrained-gauss2|$PRE $AUG --gender-weight 10 --age-sigma 2"
    "pretrained-gw30|$PRE $AUG --gender-weight 30"
    "pretrained-blr0.3|$PRE $AUG --gender-weight 10 --backbone-lr-mult 0.3"
    "pretrained-blr0.1|$PRE $AUG --gender-weight 10 --backbone-lr-mult 0.1"
    "pretrained-strongaug|$PRE --color 2 --rand-crop 0.2 --gender-weight 10"
    "pretrained-balance0.5|$PRE $AUG --gender-weight 10 --balance 0.5"
    "pretrained-blr0.1-gw30|$PRE $AUG --gender-weight 30 --backbone-lr-mult 0.1"
)

run_variant() {
    local name=$1 extra=$2
    local prefix="$OUT/$name/model"
    if [ -f "$RESULTS/$name.json" ]; then
        echo "$name: already evaluated"
        return
    fi
    if [ ! -f "$prefix-$(printf %04d "$EPOCHS").params" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -u train.py $BASE $extra --prefix "$prefix" --resume > "$OUT/$name.out" 2>&1
    fi
    mkdir -p "$RESULTS"
    "$PYTHON" eval.py --data "$DATA/val.rec" --model "$prefix,$EPOCHS" --json "$RESULTS/$name.json" \
        > "$OUT/$name.eval.out" 2>&1
    echo "$name: $(tail -1 "$OUT/$name.eval.out")"
}

mkdir -p "$OUT"
running=0
for variant in "${VARIANTS[@]}"; do
    run_variant "${variant%%|*}" "${variant#*|}" &
    running=$((running + 1))
    if [ "$running" -ge "$LANES" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait
