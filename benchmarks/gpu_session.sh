#!/bin/bash
# Everything a lent GPU machine should check, in one short run (about 10 minutes on one H200):
#   1. the CUDA tests (tests/test_cuda.py: exact accumulation, DDP + NCCL gather path, bf16 training + resume);
#   2. samples/s and step memory of the paper-sized pair (ViT-B-16 teacher -> ViT-T-16 student, bf16,
#      clipkd recipe, random weights and inputs) for one batch of B and of 4B, and 4 x B through GradCache;
#   3. the same pair: a clipkd step with the online teacher, and from reinforced data (the teacher's embeddings
#      in the batch, no teacher), each / the baseline step (reinforce_speed.py part 4, fp32, batch 128).
# Usage (repo root; clipkd importable or PYTHONPATH=src): bash benchmarks/gpu_session.sh OUT_DIR
# With several GPUs also run: python benchmarks/distributed_overhead.py --device cuda --nproc N ...
set -u
OUT=${1:-gpu-session}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, open_clip, timm; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -25 | tee "$OUT/cuda_tests.txt"
B=${BATCH:-128}
for cfg in "direct $B 1" "direct $((4 * B)) 1" "global $B 4" "global $B 1"; do
  set -- $cfg
  timeout 150 $PY benchmarks/scaling.py --device cuda --student ViT-T-16 --teacher ViT-B-16 --precision bf16 \
    --mode "$1" --batch "$2" --accum "$3" --steps 10 --warmup 3 2>"$OUT/scaling.err" | tee -a "$OUT/scaling.jsonl"
done
timeout 240 $PY benchmarks/reinforce_speed.py --parts online --online-device cuda --online-batch ${BATCH:-128} \
  --online-repeats 10 --online-warmup 3 2>"$OUT/reinforce_speed.err" | tee "$OUT/reinforce_speed.txt"

# 4. the data path against the student step (issue 25): ViT-T-16 from stored ViT-B-16 embeddings, bf16, JPEG shards,
#    views made on the GPU; prints RATIO run/step (target >= 0.9) and the run's MFU
timeout 420 $PY benchmarks/gpu_feed.py --out "$OUT/feed" 2>"$OUT/gpu_feed.err" | tail -4 | tee "$OUT/gpu_feed.txt"
