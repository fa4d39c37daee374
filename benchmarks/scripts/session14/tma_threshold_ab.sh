#!/bin/bash
# For a device session (written in session 14, not yet run; carry [".devsite"] for hydra, ~4-5 min),
# from the repository root; results under $OUT. Issue 17: the bulk reduce-adds only from
# tiles.TMA_REDUCE_MIN_SCORES = 2^28 scores per backward (B H Lq Lk) against at every size
# (PFB_TMA_REDUCE_MIN_SCORES=0, as before session 14), alternating, eager (do_bench, as the record):
# the triangle at 256 / 384 / 448 / 512 (67 M / 226 M / 360 M / 537 M scores: below, below, above,
# above), the single attention at 384 / 768 / 1536 (all below) and the diffusion shape at 384.
# Where the host is the bound the threshold should save the descriptors' ~115 us per forward +
# backward (benchmarks/session13/host_profile_h100/); above it nothing changes.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session14}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
for run in 1 2; do
  for side in threshold always; do
    [ $SECONDS -gt 480 ] && break 2
    min=""; [ $side = always ] && min=0
    env ${min:+PFB_TMA_REDUCE_MIN_SCORES=$min} timeout $((590 - SECONDS)) python3 scripts/bench_attention.py \
      "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" "triangle.sizes=[256,384,448,512]" \
      "single.sizes=[384,768,1536]" "diffusion.sizes=[384]" output_dir="$OUT/tma_threshold_ab/${side}_$run" \
      > "$OUT/tma_threshold_ab_${side}_$run.log" 2>&1
    echo "tma $side run $run rc=$? ${SECONDS}s"; grep -E "^\| (triangle|single|diffusion)" "$OUT/tma_threshold_ab/${side}_$run/results.md"
  done
done
echo "total ${SECONDS}s"
