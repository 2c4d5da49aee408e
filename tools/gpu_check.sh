#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks of docs/performance.md, as one script for a lent GPU machine (its own
# python3 with PyTorch, Triton and torchvision; this checkout on PYTHONPATH). Writes logs and JSON to $OUT
# (default ./gpu-out) and prints the tables last.   Usage: bash tools/gpu_check.sh [quick]
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 ALEXNET_CACHE=/tmp/alexnet-cache ALEXNET_DATA=/tmp/alexnet-data TQDM_DISABLE=1
PY=python3
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
$PY -c "import torch, torchvision, triton, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torchvision.__version__, triton.__version__)"

step "CUDA tests"
timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_lrn_triton.py \
  tests/test_data_device_decode.py 2>&1 | tee "$OUT/tests.log" | tail -15

B="$PY -m alexnet.cli bench alexnet caffenet zfnet --device cuda --batch-size 256 --channels-last --repeats 20 --warmup 5"
step "bench bf16 channels-last, Triton LRN (+ GPU memory at batch 128)"
timeout 150 $B --amp --json > "$OUT/bench_amp.json"

step "input pipeline: 4000 ImageNet-sized JPEGs, 8 workers"
$PY tools/make_jpegs.py /tmp/jpegs --images 4000
timeout 120 $PY -m alexnet.cli bench --only-data --data /tmp/jpegs --device cuda --workers 8 --data-images 3840 \
  --json > "$OUT/data.json"

step "training on the JPEGs: CPU decode (12 workers) vs --gpu-decode; images/s of each epoch"
for mode in cpu gpu; do
  flags=""; [ $mode = gpu ] && flags="--gpu-decode"
  timeout 100 $PY -m alexnet.cli train --model alexnet --data /tmp/jpegs --out /tmp/run-$mode --device cuda --amp \
    --batch-size 256 --epochs 3 --workers 12 --checkpoint-every 100000 $flags > "$OUT/train-$mode.log" 2>&1
  echo "$mode: $(cut -d, -f1,8 /tmp/run-$mode/metrics.csv 2>/dev/null | tr '\n' ' ')"
done
cp /tmp/run-gpu/metrics.csv "$OUT/metrics-gpu.csv" 2>/dev/null

if [ "${1:-}" != quick ]; then
  step "bench bf16 channels-last, composed LRN"
  ALEXNET_TRITON=0 timeout 100 $B --amp --no-memory --json > "$OUT/bench_amp_composed.json"
  step "bench fp32 (TF32) channels-last, Triton LRN"
  timeout 100 $B --no-memory --json > "$OUT/bench_tf32.json"
fi

step tables
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from alexnet.bench import Report, format_report, Row, MemoryRow, DataRow
for name in ("bench_amp", "bench_amp_composed", "bench_tf32", "data"):
    f = Path(sys.argv[1]) / f"{name}.json"
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        print(f"--- {name}: no result ({e})"); continue
    r = Report(d["machine"], d["settings"], [Row(**x) for x in d["rows"]], [MemoryRow(**x) for x in d["memory"]],
               [DataRow(**x) for x in d["data"]])
    print(f"--- {name}"); print(format_report(r))
PYEOF
