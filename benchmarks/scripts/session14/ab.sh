#!/bin/bash
# Session 14's two A/Bs for a device session (written in session 14, not yet run), from the
# repository root; carry [".devsite"] for hydra; results under $OUT. One step per call:
#
#   bash benchmarks/scripts/session14/ab.sh tma     (~4-5 min)
#     The bulk reduce-adds only from tiles.TMA_REDUCE_MIN_SCORES = 2^28 scores per backward
#     (B H Lq Lk) against at every size (PFB_TMA_REDUCE_MIN_SCORES=0, as before session 14),
#     alternating, eager (do_bench, as the record): the triangle at 256 / 384 / 448 / 512 (67 M /
#     226 M / 360 M / 537 M scores: below, below, above, above), the single attention at 384 / 768 /
#     1536 (all below) and the diffusion shape at 384. Where the host is the bound the threshold
#     should save the descriptors' ~115 us per forward + backward
#     (benchmarks/session13/host_profile_h100/); above it nothing changes.
#
#   bash benchmarks/scripts/session14/ab.sh rows4   (~6-8 min)
#     Four rows per backward program, which halves the fused dS sum's reduce-adds, against the
#     default two, alternating, triangle shape at N = 1536 and 2048 (1.29-1.34x the floor forward +
#     backward on an H100): the two least-spilling 64-wide four-row tiles compiled for sm_90 (464-488 B
#     of spill stack against the default's 8, benchmarks/session14/bwd_rows4_cpu_compile/); and the
#     default two-row tiles with the dS sum left to the separate _ds_sum_kernel (no reduce-adds of
#     dS at all, two products per row recomputed: slower at N = 1024 in session 3, untimed past the
#     L2 share). Run it after session13/call_next.sh, whose N = 2048 profile says how much of the
#     backward the dS sum takes.
export PYTHONUNBUFFERED=1
step=$1
case "$step" in tma|rows4) ;; *) echo "usage: $0 tma|rows4" >&2; exit 2 ;; esac
OUT=${OUT:-bench_out/session14}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
if [ "$step" = tma ]; then
  sides="threshold always"
  sizes=("triangle.sizes=[256,384,448,512]" "single.sizes=[384,768,1536]" "diffusion.sizes=[384]")
  methods="methods=[sdpa_floor,fb_bias,fb_factors]"
else
  sides="default bwd_rows4_m64n64w8 bwd_rows4_m64n32w4s3 bwd_unfused_ds"
  sizes=("triangle.sizes=[1536,2048]" "single.sizes=[]" "diffusion.sizes=[]")
  methods="methods=[fb_bias,fb_factors]"
fi
for run in 1 2; do
  for side in $sides; do
    [ $SECONDS -gt 480 ] && break 2
    min=""; [ $side = always ] && min=0
    cfg=null; [ -f benchmarks/scripts/session14/$side.json ] && cfg=benchmarks/scripts/session14/$side.json
    env ${min:+PFB_TMA_REDUCE_MIN_SCORES=$min} timeout $((590 - SECONDS)) python3 scripts/bench_attention.py \
      "$methods" "ranks=[32]" "${sizes[@]}" kernel_configs=$cfg output_dir="$OUT/${step}_ab/${side}_$run" \
      > "$OUT/${step}_ab_${side}_$run.log" 2>&1
    echo "$step $side run $run rc=$? ${SECONDS}s"
    grep -E "^\| (triangle|single|diffusion)" "$OUT/${step}_ab/${side}_$run/results.md"
  done
done
echo "total ${SECONDS}s"
