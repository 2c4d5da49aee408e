#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks of docs/performance.md, as one script for a lent GPU machine (its own
# python3 with PyTorch, Triton and torchvision; this checkout on PYTHONPATH). Writes logs and JSON to $OUT
# (default ./gpu-out) and prints the tables last.
#   Usage: bash tools/gpu_check.sh [SECTION ...]
#   sections: tests (or quicktests: LRN, conv stages, towers, models) stage bench tf32 data train profile compile
#   spread (alexnet's and caffenet's training rows in six processes, cuDNN's algorithms timed or by heuristics)
#   loop (alexnet train from the packed store: losses read late and batches ahead, against reading each loss at
#   once and copying on the compute stream, ALEXNET_LOSS_LAG=0 ALEXNET_PREFETCH=0, in alternation)
#   host (what a training step costs the host: enqueue time with the GPU kept busy, the operators' host time)
#   graph (the bf16 bench with every row's step one CUDA graph: the GPU's work without the host's launches)
#   graphloop (tests/test_cuda_graph.py, then alexnet train from the store, eager against --cuda-graph, alternating)
#   cropab (the input pipeline's rows with the workers' crops off and on, ALEXNET_WORKER_CROP=0/1, alternating)
#   stageab (session 19's stage kernels: their compiled tests, each variant of tools/gpu_stage.py, and the bf16
#   bench with all of them against the shipped ones, alternating)
#   (default: all but quicktests and loop)
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 ALEXNET_CACHE=/tmp/alexnet-cache ALEXNET_DATA=/tmp/alexnet-data TQDM_DISABLE=1
PY=python3
SECTIONS=" ${*:-tests stage bench tf32 data train profile compile} "
want() { [[ $SECTIONS == *" $1 "* ]]; }
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
$PY -c "import torch, torchvision, triton, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torchvision.__version__, triton.__version__)"

if want tests; then
  step "CUDA tests"
  timeout 300 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_lrn_triton.py \
    tests/test_stage_triton.py tests/test_data_on_device.py 2>&1 | tee "$OUT/tests.log" | tail -4
fi

if want quicktests; then
  step "CUDA tests: LRN, conv stages, tower convs, models"
  timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_lrn_triton.py tests/test_stage_triton.py \
    tests/test_cuda_graph.py -k "not end_to_end and not compiled and not nvjpeg and not augmented" 2>&1 | tee "$OUT/tests.log" | tail -3
fi

if want stage; then
  step "conv stages: modules against the fused Triton kernels, bf16, batch 256"
  timeout 120 $PY tools/gpu_stage.py 2>&1 | tee "$OUT/stage.txt"
  if [ "${TUNE:-0}" = 1 ]; then  # the later sections run with the tiles the sweep found fastest
    export ALEXNET_STAGE_TILES=$(tail -1 "$OUT/stage.txt" | awk '{print $NF}'); echo "ALEXNET_STAGE_TILES=$ALEXNET_STAGE_TILES"
  fi
fi

B="$PY -m alexnet.cli bench alexnet caffenet zfnet --device cuda --batch-size 256 --channels-last --repeats 20 --warmup 5"
NEW="ALEXNET_FAST_LOG2=1 ALEXNET_KEEP_DENOMINATOR=1 ALEXNET_STAGE_ROWS=1"  # session 19's kernels (off by default)
if want stageab; then
  step "CUDA tests of the LRN and stage kernels compiled, all session-19 kernels on (the stage tests run each variant)"
  env $NEW timeout 200 $PY -m pytest -q -x -p no:cacheprovider tests/test_lrn_triton.py tests/test_stage_triton.py \
    tests/test_cuda.py -k "lrn or stage or fused or learn" 2>&1 | tee "$OUT/stageab-tests.log" | tail -3
  step "conv stages: the shipped kernels against each session-19 variant, bf16, batch 256"
  timeout 240 $PY tools/gpu_stage.py --variants shipped log2 kept rows all --tiles 2048,1024 1024,2048 2>&1 \
    | tee "$OUT/stageab.txt"
  step "bench bf16 channels-last, training: the shipped stage kernels, then all session-19 variants"
  for v in shipped new; do
    env $([ $v = new ] && echo $NEW) timeout 100 $B --amp --mode train --no-memory --json > "$OUT/stageab.json"
    $PY -c "import json; d = json.load(open('$OUT/stageab.json')); print('$v', '  '.join(
      f\"{r['model']} {r['step_ms']:.2f} ms {r['vs_torchvision'] or 1:.2f}\" for r in d['rows']))"
  done
fi
if want bench; then
  step "bench bf16 channels-last, Triton LRN (+ GPU memory at batch 128)"
  timeout 150 $B --amp --json > "$OUT/bench_amp.json"
  step "bench bf16 channels-last, conv stages as modules (ALEXNET_FUSE=0)"
  ALEXNET_FUSE=0 timeout 120 $B --amp --json > "$OUT/bench_amp_modules.json"
fi
if want host; then
  step "host: the time to enqueue a bf16 training step with the GPU kept busy, and the operators' host time"
  timeout 150 $PY tools/gpu_profile.py --host ${HOST:-torchvision_alexnet alexnet caffenet zfnet} --only-copies 2>&1 \
    | tee "$OUT/host.txt"
  # the same host's CPU on narrow models (docs/performance.md, Session 20: 2.1-2.7 ms a step on the 2-core VM)
  timeout 60 $PY tools/host_step.py --rounds 5 2>&1 | tee -a "$OUT/host.txt"
fi
if want graph; then
  step "bench bf16 channels-last, each step one CUDA graph (train and infer, torchvision's row too)"
  timeout 150 $B --amp --cuda-graph --no-memory --json > "$OUT/bench_graph.json"
fi
if want tf32; then
  step "bench fp32 (TF32) channels-last, Triton LRN"
  timeout 100 $B --no-memory --json > "$OUT/bench_tf32.json"
fi

if want spread; then
  step "spread: the training rows of alexnet and caffenet, each run its own process (vs tv)"
  for bm in 1 0 1 0 1 0; do
    ALEXNET_CUDNN_BENCHMARK=$bm timeout 60 $PY -m alexnet.cli bench alexnet caffenet --mode train --device cuda \
      --batch-size 256 --channels-last --amp --repeats 20 --warmup 5 --no-memory --json > "$OUT/spread.json" 2>/dev/null
    $PY -c "import json; d = json.load(open('$OUT/spread.json')); print('cudnn.benchmark=$bm', '  '.join(
      f\"{r['model']} {r['step_ms']:.2f} ms {r['vs_torchvision'] or 1:.2f}\" for r in d['rows']))"
  done
fi

if want profile; then
  step "profile: a bf16 training step of each variant, top kernels, where the copies come from"
  timeout 180 $PY tools/gpu_profile.py --profile ${PROFILE:-torchvision_alexnet alexnet zfnet} --copies ${COPIES:-alexnet zfnet} 2>&1 | tee "$OUT/profile.txt"
fi

if want data || want train || want loop || want graphloop || want cropab; then
  $PY tools/make_jpegs.py /tmp/jpegs --images 4000
fi
if want data || want train || want loop || want graphloop || want cropab; then
  step "alexnet data-pack: the JPEGs decoded once at 256×256 (AlexNet §2), 12 workers"
  timeout 120 $PY -m alexnet.cli data-pack /tmp/jpegs --workers 12 --json > "$OUT/pack.json"; tail -c 300 "$OUT/pack.json"
fi
if want data; then
  step "input pipeline: 4000 ImageNet-sized JPEGs, 8 workers (files, and the packed store)"
  timeout 240 $PY -m alexnet.cli bench --only-data --data /tmp/jpegs --device cuda --workers 8 --data-images 24000 \
    --json > "$OUT/data.json"
  $PY tools/worker_rate.py /tmp/jpegs --images 640 | tee "$OUT/worker_rate.txt"
  for pool in "" --no-pool; do  # the same through a DataLoader worker, its batches' shared memory reused or fresh
    $PY tools/worker_rate.py /tmp/jpegs --images 10240 --batch-size 256 --loader $pool | tee -a "$OUT/worker_rate.txt"
  done
  # 12 workers into a main process that only receives: the DataLoader's ceiling on this host, without the GPU
  $PY tools/worker_rate.py /tmp/jpegs --images 61440 --batch-size 256 --loader --workers 12 | tee -a "$OUT/worker_rate.txt"
fi

if want cropab; then
  step "input pipeline A/B: the workers send whole 256² patches (ALEXNET_WORKER_CROP=0) or their 227² crops, 8 workers"
  for crop in 0 1 0 1; do
    ALEXNET_WORKER_CROP=$crop timeout 120 $PY -m alexnet.cli bench --only-data --data /tmp/jpegs --device cuda \
      --workers 8 --data-images 12000 --json > "$OUT/cropab.json"
    $PY -c "import json; d = json.load(open('$OUT/cropab.json')); print('worker crop $crop', '  '.join(
      f\"{r['pipeline']} {r['images_per_s']:.0f}\" for r in d['data'] if 'gpu_augment' in r['pipeline']))"
  done
  for crop in 0 1; do  # the pin thread's ceiling: 12 workers into a main process that pins and receives
    echo "worker crop $crop, pinned: $(ALEXNET_WORKER_CROP=$crop timeout 60 $PY tools/worker_rate.py /tmp/jpegs \
      --images 20480 --batch-size 256 --loader --workers 12 --pin | tail -1)"
  done
fi

if want train; then
  step "training alexnet bf16 on the JPEGs, 12 workers: epoch, images/s, data_wait (packed: from the store)"
  for mode in cpu augment packed; do
    flags="--gpu-augment"; [ $mode = cpu ] && flags="--no-gpu-augment"; [ $mode = decode ] && flags="--gpu-decode"
    if [ $mode = packed ]; then unset ALEXNET_PACKED; else export ALEXNET_PACKED=0; fi
    timeout 100 $PY -m alexnet.cli train --model alexnet --data /tmp/jpegs --out /tmp/run-$mode --device cuda --amp \
      --batch-size 256 --epochs 3 --workers 12 --checkpoint-every 100000 $flags > "$OUT/train-$mode.log" 2>&1
    echo "$mode: $(cut -d, -f1,8,9 /tmp/run-$mode/metrics.csv 2>/dev/null | tr '\n' ' ')"
  done
  unset ALEXNET_PACKED
fi

if want loop; then
  step "CUDA tests: batches ahead on a side stream, losses read late, evaluation, each input pipeline"
  timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k "ahead or late or skips_the_fused or pooled or evaluate_on_cuda or each_cuda_input" 2>&1 \
    | tee "$OUT/loop-tests.log" | tail -3
  step "training loop A/B: alexnet bf16 --gpu-augment from the store, 12 workers: epoch, images/s, data_wait"
  for ab in sync late sync late; do
    if [ $ab = sync ]; then export ALEXNET_LOSS_LAG=0 ALEXNET_PREFETCH=0; else unset ALEXNET_LOSS_LAG ALEXNET_PREFETCH; fi
    rm -rf /tmp/run-loop
    timeout 100 $PY -m alexnet.cli train --model alexnet --data /tmp/jpegs --out /tmp/run-loop --device cuda --amp \
      --batch-size 256 --epochs 4 --workers 12 --checkpoint-every 100000 --gpu-augment > "$OUT/loop-$ab.log" 2>&1
    echo "$ab: $(cut -d, -f1,8,9 /tmp/run-loop/metrics.csv 2>/dev/null | tr '\n' ' ')"
  done
  unset ALEXNET_LOSS_LAG ALEXNET_PREFETCH
fi

if want graphloop; then
  step "CUDA graphs: replayed steps against eager ones, and a short run (tests/test_cuda_graph.py)"
  timeout 150 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda_graph.py 2>&1 | tee "$OUT/graph-tests.log" | tail -3
  step "training A/B: alexnet bf16 --gpu-augment from the store, 12 workers, eager against --cuda-graph"
  for g in eager graph eager graph; do
    flags=""; [ $g = graph ] && flags="--cuda-graph"
    rm -rf /tmp/run-graph
    timeout 100 $PY -m alexnet.cli train --model alexnet --data /tmp/jpegs --out /tmp/run-graph --device cuda --amp \
      --batch-size 256 --epochs 4 --workers 12 --checkpoint-every 100000 $flags > "$OUT/graphloop-$g.log" 2>&1
    echo "$g: $(cut -d, -f1,8,9 /tmp/run-graph/metrics.csv 2>/dev/null | tr '\n' ' ')"
  done
fi

if want compile; then
  step "bench bf16 channels-last, torch.compile (train)"
  timeout 200 $PY -m alexnet.cli bench alexnet --device cuda --batch-size 256 --channels-last --repeats 20 --warmup 5 \
    --amp --compile --mode train --no-memory --json > "$OUT/bench_compile.json"
fi

step tables
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from alexnet.bench import Report, format_report, Row, MemoryRow, DataRow
for name in ("bench_amp", "bench_amp_modules", "bench_graph", "bench_tf32", "bench_compile", "data"):
    f = Path(sys.argv[1]) / f"{name}.json"
    if not f.is_file():
        continue
    try:
        d = json.loads(f.read_text())
    except ValueError as e:
        print(f"--- {name}: no result ({e})"); continue
    r = Report(d["machine"], d["settings"], [Row(**x) for x in d["rows"]], [MemoryRow(**x) for x in d["memory"]],
               [DataRow(**x) for x in d["data"]])
    print(f"--- {name}"); print(format_report(r))
PYEOF
