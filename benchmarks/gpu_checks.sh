#!/usr/bin/env bash
# The GPU checks, one command on a machine with one CUDA GPU, under 10 minutes on an H100/H200 (each part has its
# own time limit, so a slow part cannot stop the others):
#   1. the small-preset goals on the GPU (supernet overhead, hard-gate subnet, prefix scoring) and the GPU lines
#      (bf16 autocast, channels_last_3d, both, pinned copy);
#   2. the small-preset supernet overhead with torch.compile of the forward (goal <= 1.3);
#   3. one DenseNet-121 step at 16x224x224, batch 32, bf16 + channels_last_3d, with its peak GPU memory, against the
#      videos loader with 8 and 16 workers (256p prepared files);
#   4. supply and demand per paper preset with each preset's supernet step timed on the GPU (decord in one CPU
#      process), and the same for the SSv2 preset with the GPU decoder (data.backend torchcodec; where torchcodec or
#      FFmpeg's shared libraries are missing it says so in one line and decord is timed instead).
# Results go to $OUT (default gpu-checks/). Usage: bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
part() { local limit=$1 name=$2; shift 2; echo "== $name (limit ${limit} s)"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"; echo "   $name: $((SECONDS - t0)) s, exit ${PIPESTATUS[0]}"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', torch.get_num_threads())" \
  | tee -a "$OUT/device.txt"

part 150 goals "$PY" benchmarks/run.py --device cuda --only supernet_overhead --only hard_gate_subnet \
  --only prefix_scoring --only gpu_bf16_autocast
part 120 compile "$PY" benchmarks/run.py --device cuda --compile --only supernet_overhead
part 120 densenet_loader "$PY" benchmarks/bench_videos.py --gpu-loader
part 120 supply "$PY" benchmarks/bench_supply.py --device cuda
part 45 supply_gpu_decoder "$PY" benchmarks/bench_supply.py --device cuda --preset ssv2 --backend torchcodec
