#!/usr/bin/env bash
# Train several generator variants side by side on one lent GPU (no FiftyOne there, see
# without_fiftyone.py; segment_anything travels in .devsite/). Each line of VARIANTS is
# "NAME OVERRIDES...", passed to `unseg train --config tiny --device cuda`. Each run stops
# after TRAIN_LIMIT seconds at the latest; its final generator (or else its newest
# checkpoint's) and metrics land in $OUT/NAME.tar (one file per run: what comes back
# from the machine is limited in count and size, about 60 MB).
set -u
OUT=${OUT:-gpu-variants}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p /tmp/variants
while read -r name overrides; do
  [ -z "$name" ] && continue
  (
    start=$(date +%s)
    timeout "${TRAIN_LIMIT:-480}" python3 benchmarks/gpu/without_fiftyone.py trainer.cli train \
      --config tiny --device cuda --out "/tmp/variants/$name" $overrides > "/tmp/variants/$name.log" 2>&1
    echo "$name rc $? in $(( $(date +%s) - start )) s: $overrides" | tee "$OUT/$name.txt"
    run=/tmp/variants/$name
    [ -f "$run/generator/model.safetensors" ] ||
      cp -r "$(ls -d "$run"/checkpoints/step_*/generator | tail -1)" "$run/generator"
    tar cf "$OUT/$name.tar" -C /tmp/variants "$name/generator" "$name/metrics.csv"
    tr '\r' '\n' < "/tmp/variants/$name.log" | grep -v "step/s\]\|s/step\]" | tail -5 >> "$OUT/$name.txt"
  ) &
done <<< "${VARIANTS:?set VARIANTS, one 'NAME OVERRIDES...' per line}"
wait
