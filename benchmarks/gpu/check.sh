#!/usr/bin/env bash
# The GPU check of the trainer, run on a lent GPU machine (no FiftyOne there, see
# without_fiftyone.py; segment_anything travels in .devsite/): CUDA + bf16 autocast
# throughput of the tiny config at two batch sizes, then the full `unseg train --config
# tiny` recipe on the GPU. Results land in $OUT (or ./gpu-check).
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
RUN="python3 benchmarks/gpu/without_fiftyone.py"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
for batch in 4 32; do
  $RUN benchmarks/train_throughput.py --device cuda --steps 30 --batch-size $batch \
    --out "$OUT/train_throughput_cuda_b$batch.json" 2>&1 | grep -v Warning | tail -8
done
start=$(date +%s)
timeout "${TRAIN_LIMIT:-330}" $RUN trainer.cli train --config tiny --device cuda --out /tmp/gpu-tiny \
  > "$OUT/train_tiny.log" 2>&1
echo "train rc $? in $(( $(date +%s) - start )) s"
grep -v "it/s\]\|step/s" "$OUT/train_tiny.log" | tail -6
cp /tmp/gpu-tiny/metrics.csv /tmp/gpu-tiny/summary.json "$OUT/" 2>/dev/null
true
