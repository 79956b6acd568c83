#!/usr/bin/env bash
# Every GPU check of recrl in one script, for a lent GPU machine (about 8 minutes on one H200):
#   bash bench/gpu_check.sh [OUT_DIR]
# 1. the GPU tests (tests/test_gpu.py; they skip without a GPU);
# 2. bench/throughput.py on cuda: reference, default and wide rows of DQN and PPO (bert_tiny);
# 3. the PPO GPU preset whole and the DQN GPU preset's first 90 s, with their results.json.
# Everything it measures lands in OUT_DIR (default: outputs/gpu_check): copy the numbers to
# docs/benchmarks.md with the machine's name.
set -uo pipefail
out=${1:-outputs/gpu_check}
mkdir -p "$out"
export WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py -m "not slow" \
  2>&1 | tail -25 | tee "$out/test_gpu.txt"

timeout 150 python bench/throughput.py --devices cuda --threads 0 --widths 1024 4096 \
  --max-frames 400000 --json "$out/throughput_cuda.json" 2>&1 | tee "$out/throughput_cuda.txt"

# The PPO preset whole (~20M frames: ~3.5 min at the 100k frames/s target); the DQN preset for
# its first 90 s (its whole run is a separate ~6 min: python -m recrl.run experiment=synthetic_dqn_gpu).
timeout 300 python -m recrl.run experiment=synthetic_ppo_gpu hydra.run.dir="$out/synthetic_ppo_gpu" \
  trainer.enable_progress_bar=false 2>&1 | tail -15 | tee "$out/synthetic_ppo_gpu.txt"
timeout 150 python -m recrl.run experiment=synthetic_dqn_gpu hydra.run.dir="$out/synthetic_dqn_gpu" \
  +trainer.max_time=00:00:01:30 trainer.enable_progress_bar=false 2>&1 | tail -15 \
  | tee "$out/synthetic_dqn_gpu.txt"
