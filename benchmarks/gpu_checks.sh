#!/usr/bin/env bash
# The GPU checks, in one run on a machine with one CUDA GPU (about 5 minutes on an H100):
#   1. the benchmark goals 1-3 on the GPU (benchmarks/run.py --device cuda), with the GPU lines
#      (bf16 autocast, channels_last_3d, pinned memory);
#   2. CUDA training speed: the default supernet (params.yaml, built-in benchmark) trained by the CLI on the GPU in
#      fp32, bf16 and channels_last_3d, against the same run on the machine's CPU cores;
#   3. DDP under torchrun on the GPU: 2 processes (gloo, since NCCL refuses two ranks on one GPU; SyncBatchNorm on)
#      against 1 process with the same global batch, and a gated supernet run of the CLI under torchrun;
#   4. the videos-storage loader against the GPU: DenseNet-121 training step vs seconds per batch of 8 and 16 workers.
#   5. the supernet overhead of the small preset (launch-bound on a GPU) with torch.compile of the forward
#      (goal <= 1.3), and the elastic-restart and DDP tests on the GPU machine.
# Results go to $OUT (default gpu-checks/). Usage: bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
W=$(mktemp -d)
stf() { "$PY" -m stfusion.cli "$@"; }
secs() { local t0=$SECONDS; "$@" >>"$OUT/train.log" 2>&1; local rc=$?; echo "$((SECONDS - t0)) rc=$rc"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', torch.get_num_threads())" \
  | tee -a "$OUT/device.txt"

echo "== 1. benchmark goals on the GPU"
"$PY" benchmarks/run.py --device cuda 2>&1 | tee "$OUT/bench_cuda.txt"

echo "== 2. CUDA training speed of the default supernet (CLI)"
stf generate --root "$W/builtin" --timing "$W/t.json" -q --no-progress >>"$OUT/train.log" 2>&1
stf prepare --root "$W/builtin" --cache "$W/cache" --workers 8 --timing "$W/t.json" -q --no-progress >>"$OUT/train.log" 2>&1
for run in "cuda fp32 false" "cuda bf16 false" "cuda fp32 true" "cuda bf16 true" "cpu fp32 false"; do
  set -- $run
  t=$(secs stf train-supernet --cache "$W/cache" --out "$W/sn-$1-$2-$3" --timing "$W/t.json" --no-progress -q \
      --set compute.device="$1" --set compute.precision="$2" --set compute.channels_last="$3")
  acc=$(tail -1 "$W/sn-$1-$2-$3/history.csv" 2>/dev/null | awk -F, '{print $NF}')
  echo "train-supernet device=$1 precision=$2 channels_last=$3: ${t} s, last train_top1 $acc" | tee -a "$OUT/train.txt"
done

echo "== 3. DDP under torchrun on the GPU"
"$PY" tests/ddp_worker.py "$W/ddp1" 2 0 cuda >>"$OUT/ddp.log" 2>&1
STFUSION_DIST_BACKEND=gloo "$PY" -m torch.distributed.run --nproc_per_node 2 --master_port 29541 \
  tests/ddp_worker.py "$W/ddp2" 2 0 cuda >>"$OUT/ddp.log" 2>&1
"$PY" - "$W" <<'EOF' 2>&1 | tee "$OUT/ddp.txt"
import sys, torch
w = sys.argv[1]
a = torch.load(f"{w}/ddp1/model.pt", weights_only=False, map_location="cpu")["model"]
b = torch.load(f"{w}/ddp2/model.pt", weights_only=False, map_location="cpu")["model"]
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"DDP 2 processes (gloo, SyncBN, CUDA) vs 1 process, same global batch: {len(a)} tensors, max |diff| {diff:.2e}")
EOF
t=$(STFUSION_DIST_BACKEND=gloo secs "$PY" -m torch.distributed.run --nproc_per_node 2 --master_port 29542 \
    -m stfusion.cli train-supernet --cache "$W/cache" --out "$W/sn-ddp" --timing "$W/t.json" --no-progress -q \
    --set compute.device=cuda)
echo "torchrun 2 processes train-supernet (gated, every parameter used): ${t} s, history rows $(($(wc -l <"$W/sn-ddp/history.csv") - 1))" \
  | tee -a "$OUT/ddp.txt"
echo "== 4. the videos loader against the GPU step (DenseNet-121, 16x224x224, batch 32, 8 and 16 workers, 256p files)"
"$PY" benchmarks/bench_videos.py --gpu-loader 2>&1 | tee "$OUT/gpu_loader.txt"

echo "== 5. torch.compile of the gated forward (small preset, GPU), and the fault-tolerance tests"
"$PY" benchmarks/run.py --device cuda --compile 2>&1 | grep -E "supernet_overhead|supernet step" \
  | tee "$OUT/compile.txt"
"$PY" -m pytest -q tests/test_ddp.py tests/test_fault_tolerance.py -k "elastic or sigterm" 2>&1 | tail -n 3 \
  | tee "$OUT/fault_tests.txt"
tail -n 20 "$OUT/train.log" "$OUT/ddp.log" >"$OUT/tails.txt"
rm -rf "$W"
