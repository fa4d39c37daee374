#!/bin/bash
# Session 15, one device call (carry [".devsite"] for hydra; ~9.5 min), the most issue 17 needs
# from a single call when machines are scarce, in order of need:
#   1. the kernel GPU tests (tests/test_kernel_gpu.py: session 14's four-row backward and the
#      small backwards without the bulk reduce-adds had never run on a GPU), then the fuzz suite;
#   2. session 14's reduce-add threshold against the reduce-adds at every size, alternating
#      (scripts/session14/ab.sh tma's shapes, one round each side, a second while time is left);
#   3. the diffusion factors on their one-row backward tiles from CUDA graph replays
#      (scripts/session13/call_next.sh's first step), if time is left.
export PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-585}  # seconds this call may take (less when little device time is left)
OUT=${OUT:-bench_out/session15}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 200 python3 -m pytest -q -rs tests/test_kernel_gpu.py -n 8 -p no:cacheprovider > "$OUT/kernel_gpu_tests.txt" 2>&1
echo "kernel gpu tests rc=$? ${SECONDS}s"; grep -E "passed|failed|^FAILED|^ERROR" "$OUT/kernel_gpu_tests.txt" | tail -12
timeout 100 python3 scripts/fuzz_op.py cases=40 named=true device=cuda workers=12 timeout_s=80 \
  output_dir="$OUT/fuzz" > "$OUT/fuzz.log" 2>&1; echo "fuzz rc=$? ${SECONDS}s"
head -12 "$OUT/fuzz/results.md" 2>/dev/null; grep -A8 "^## Failures" "$OUT/fuzz/results.md" 2>/dev/null | head -10
sizes=("triangle.sizes=[256,384,448,512]" "single.sizes=[384,768,1536]" "diffusion.sizes=[384]")
for run in 1 2; do
  for side in threshold always; do
    [ $SECONDS -gt $((LIMIT - 115)) ] && break 2
    min=""; [ $side = always ] && min=0
    env ${min:+PFB_TMA_REDUCE_MIN_SCORES=$min} timeout $((LIMIT - SECONDS)) python3 scripts/bench_attention.py \
      "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" "${sizes[@]}" output_dir="$OUT/tma_ab/${side}_$run" \
      > "$OUT/tma_ab_${side}_$run.log" 2>&1
    echo "tma $side run $run rc=$? ${SECONDS}s"
    grep -E "^\| (triangle|single|diffusion)" "$OUT/tma_ab/${side}_$run/results.md"
  done
done
if [ $SECONDS -lt $((LIMIT - 115)) ]; then
  timeout $((LIMIT - SECONDS)) python3 scripts/bench_attention.py "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" \
    cuda_graphs=true "triangle.sizes=[]" "single.sizes=[]" "diffusion.sizes=[384,768,1170]" \
    output_dir="$OUT/diffusion_factors_graphs" > "$OUT/diffusion_factors_graphs.log" 2>&1
  echo "diffusion graphs rc=$? ${SECONDS}s"; grep -E "^\| diffusion" "$OUT/diffusion_factors_graphs/results.md"
fi
echo "total ${SECONDS}s"
