#!/usr/bin/env bash
# The learner's GPU checks, in one call for a lent GPU machine (see docs/benchmarks.md, "Learner
# speed"). Prepare once on the CPU machine: bash ../shared/device/bundle.sh pytest hypothesis
# iniconfig pluggy; then run it there with carry [".device"]:
#   source .device/activate.sh; bash cluster/gpu_check.sh
# It writes $OUT/gpu_check.txt (tests) and $OUT/bench_learner_*.json (one per batch size).
set -uo pipefail
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/device.txt"
# Captured against eager CUDA updates; frames gathered on the GPU against the host ring.
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_td3.py tests/test_replay.py \
  -k "cuda or graph or bf16 or frames_kept" 2>&1 | tail -15 | tee "$out/gpu_check.txt"
for batch in 256 64; do
  timeout 120 python3 -c 'from cluster.cli import main; main()' bench learner --device cuda \
    --batch "$batch" --updates 200 --rounds 5 --json | tee "$out/bench_learner_$batch.json"
done
