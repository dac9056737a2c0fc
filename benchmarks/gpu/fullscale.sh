#!/usr/bin/env bash
# The paper-scale check, on a lent GPU machine (no FiftyOne there, see without_fiftyone.py;
# segment_anything travels in .devsite/): the `vit_b` config (SAM ViT-B generator at 1024
# px, ViT-B surrogate at 512 px, bf16 autocast) from a randomly initialised checkpoint in
# the official format (no weights can be downloaded), for STEPS bilevel steps in blocks of
# PHASE surrogate + PHASE generator steps, then resumed for PHASE more. Samples/s per
# phase come from metrics.csv, peak GPU memory from nvidia-smi; summary.txt, metrics.csv and
# train.log land in $OUT.
# CONFIG=tiny DEVICE=cpu EXTRA='--set pretrain_steps=0' runs the same path at CPU size
# (tests/test_trainer.py does, with a micro config).
set -u
OUT=${OUT:-gpu-fullscale}
CONFIG=${CONFIG:-vit_b} DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-120} PHASE=${PHASE:-30}
BATCH=${BATCH:-4} DATA=${DATA:-sample:48:0:photo+texture:512} LIMIT=${LIMIT:-240}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
RUN="python3 benchmarks/gpu/without_fiftyone.py"
RUN_DIR=${RUN_DIR:-/tmp/fullscale-$CONFIG}
rm -rf "$RUN_DIR"
echo "$CONFIG batch $BATCH on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)" \
  | tee "$OUT/summary.txt"

CKPT_ARG=""
case "$CONFIG" in vit_*)  # the SAM configs start from official weights: make random ones
  CKPT=/tmp/sam_${CONFIG}_random.pth
  [ -f "$CKPT" ] || python3 - "$CONFIG" "$CKPT" <<'EOF'
import sys, torch
from segment_anything import sam_model_registry
torch.manual_seed(0)
torch.save(sam_model_registry[sys.argv[1]]().state_dict(), sys.argv[2])
EOF
  CKPT_ARG="--sam-checkpoint $CKPT" ;;
esac

memory_watch() {  # peak MiB used on the GPU while $1 runs
  local peak=0 used
  while kill -0 "$1" 2>/dev/null; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
    sleep 1
  done
  echo "$peak"
}

train() {  # $1 = max steps, rest = extra arguments
  local steps=$1; shift
  local start=$(date +%s)
  timeout "$LIMIT" $RUN trainer.cli train --config "$CONFIG" --device "$DEVICE" $CKPT_ARG \
    --data "$DATA" --out "$RUN_DIR" --batch-size "$BATCH" --max-steps "$steps" \
    --set unit='"steps"' --set surrogate_phase=$PHASE --set generator_phase=$PHASE \
    --set val_every=$PHASE --set checkpoint_every=$PHASE --set lr_drop_at=100000 ${EXTRA:-} "$@" \
    >> "$OUT/train.log" 2>&1 &
  local pid=$!
  local peak=$(memory_watch $pid)
  wait $pid
  echo "max-steps $steps $*: rc $? in $(( $(date +%s) - start )) s, peak GPU memory ${peak} MiB" \
    | tee -a "$OUT/summary.txt"
}

train "$STEPS"
train $(( STEPS + PHASE )) --resume
cp "$RUN_DIR/metrics.csv" "$OUT/" 2>/dev/null
python3 - "$RUN_DIR/metrics.csv" <<'EOF' | tee -a "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for phase in ("surrogate", "generator"):
    rates = [float(r["samples_per_s"]) for r in rows if r["phase"] == phase and r["samples_per_s"]]
    if rates:
        print(f"{phase:<10} samples/s median {statistics.median(rates):.1f} over {len(rates)} rows")
last = [r for r in rows if r["iou_val_clean"]]
if last:
    r = last[-1]
    print(f"step {r['step']}: surrogate val IoU clean {r['iou_val_clean']} perturbed {r['iou_val_perturbed']}")
print(f"last step logged: {rows[-1]['step']}")
EOF
true
