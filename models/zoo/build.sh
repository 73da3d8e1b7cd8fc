#!/usr/bin/env bash
# Rebuild one zoo model from nothing, the way its card records it.
#
#   models/zoo/build.sh CT                         # 30 epochs on this CPU: hours
#   EPOCHS=60 DEVICE=cuda models/zoo/build.sh CT   # training steps on a GPU (README)
#   make zoo MODALITY=CT EPOCHS=60 DEVICE=cuda     # the same through make
#
# 1. synthetic series: training (seed 1), calibration (seed 2) and held-out evaluation
#    (seed 1001, which no other set uses) under $DATA; a set already complete is reused,
#    one made with other settings or another version of models/synthetic/ is an error;
# 2. training under $RUNS/MODALITY, continued from last.pt when a run is already there;
# 3. calibration on the calibration set, then into $ZOO/MODALITY: model.pt, ONNX and FP16
#    ONNX with their parity reports on the held-out set (an FP16 model that fails parity
#    is not shipped), the held-out evaluation, the training curves and the model card.
#
# The card's "Known weaknesses" come from $REMARKS: what the figures do not say.
set -euo pipefail

modality=${1:?usage: models/zoo/build.sh CT|MR|PT}
EPOCHS=${EPOCHS:-30} STEPS=${STEPS:-100} DEVICE=${DEVICE:-cpu} WORKERS=${WORKERS:-$(nproc)}
DATA=${DATA:-data} RUNS=${RUNS:-runs} ZOO=${ZOO:-models/zoo} REMARKS=${REMARKS:-}
# 240 calibration series, about 55 of them without lesions: calibration takes the most
# sensitive point that just meets specificity 0.9, so it needs many negatives to resolve it
# (on 120 with 30 negatives a PET point chosen at 27 of 30 called 5 of 24 fresh ones
# positive; on 40, 9 negatives, one false positive moved CT's by 0.11); 120 held-out
# series, because 30 flattered the PET model's sensitivity by about 0.1
TRAIN_CASES=${TRAIN_CASES:-60} CALIB_CASES=${CALIB_CASES:-240} HELDOUT_CASES=${HELDOUT_CASES:-120}
TRAIN_ARGS=${TRAIN_ARGS:-}      # more `scanside train` options, e.g. "--batch-size 32"
HELDOUT_SEED=1001

cd "$(dirname "$0")/../.."
[ -x .venv/bin/scanside ] && PATH=$PWD/.venv/bin:$PATH       # make test/run's environment
run=$RUNS/$modality entry=$ZOO/$modality
commands=()                     # what the card says was run
synthesis=$(cat models/synthetic/*.py | sha256sum | cut -c1-16)   # the code that drew a set

say() { printf '\n== %s\n' "$*" >&2; }

synth() {                       # synth NAME SEED CASES
    local out=$DATA/$1-$modality
    local command=(scanside synth --modality "$modality" --cases "$3" --seed "$2" --out "$out")
    local stamp="${command[*]} (synthesis $synthesis)"
    [ "$1" = heldout ] || commands+=("${command[*]}")
    if [ -e "$out/.complete" ]; then
        if [ "$(cat "$out/.complete")" = "$stamp" ]; then
            say "$out: complete, reused"; return
        fi
        echo "$out holds another set: $(cat "$out/.complete"), not $stamp;" \
             "set DATA to another folder or delete it" >&2
        exit 1
    fi
    say "${command[*]}"
    "${command[@]}" --workers "$WORKERS"
    printf '%s\n' "$stamp" > "$out/.complete"
}

synth train 1 "$TRAIN_CASES"
synth calib 2 "$CALIB_CASES"
synth heldout "$HELDOUT_SEED" "$HELDOUT_CASES"

# shellcheck disable=SC2206  # TRAIN_ARGS is a list of options
train=(scanside train --data "$DATA/train-$modality" --modality "$modality" --out "$run"
       --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --seed 1 $TRAIN_ARGS)
[ "$modality" = MR ] && train+=(--mr-weighting)     # the shipped MR model's input
[ -e "$run/last.pt" ] && train+=(--resume)
commands+=("${train[*]}")
say "${train[*]}"
"${train[@]}" --device "$DEVICE" --workers "$WORKERS"

calibrate=(scanside calibrate --data "$DATA/calib-$modality" --model "$run/model.pt"
           --out "$run/model.calibrated.pt")
[ "$modality" = MR ] && calibrate+=(--mirror)       # the shipped MR model infers so
commands+=("${calibrate[*]}")
say "${calibrate[*]}"
"${calibrate[@]}"

mkdir -p "$entry"
cp "$run/model.calibrated.pt" "$entry/model.pt"
cp "$run/model.calibrated.pt.calibration.json" "$entry/calibration.json"
cp "$run/training.png" "$run/history.json" "$entry/"

heldout=$DATA/heldout-$modality
say "ONNX export and parity against torch on $heldout"
scanside export onnx --model "$entry/model.pt" --out "$entry/model.onnx" --data "$heldout"
say "FP16 export and parity against FP32 on $heldout"
scanside export fp16 --onnx "$entry/model.onnx" --out "$entry/model.fp16.onnx" \
    --data "$heldout" || say "no FP16 model for $modality: see $entry/fp16-parity.json"

say "evaluation on $heldout"
scanside eval --data "$heldout" --zoo "$ZOO" --out "$entry/eval"

python -m models.card "$entry" --heldout-seed "$HELDOUT_SEED" \
    --command "$(printf '%s\n' "${commands[@]}")" --remarks "$REMARKS"
[ -n "$REMARKS" ] || say "$entry/card.md has no Known weaknesses: set REMARKS to say what the figures do not"
