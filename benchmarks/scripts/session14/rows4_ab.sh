#!/bin/bash
# For a device session (written in session 14, not yet run; carry [".devsite"] for hydra, ~4-6 min),
# from the repository root; results under $OUT. Issue 17: four rows per backward program, which
# halves the fused dS sum's reduce-adds ((B / 4) x H x N^2 x 4 B instead of (B / 2) x ...), against
# the default two, alternating, triangle shape at N = 1536 and 2048 (where forward + backward is
# 1.29-1.34x the floor on an H100): the two least-spilling 64-wide four-row tiles compiled for sm_90
# (464-488 B of spill stack against the default's 8, benchmarks/session14/bwd_rows4_cpu_compile/).
# Run it after session13/call_next.sh, whose N = 2048 profile says how much of the backward the dS
# sum takes.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session14}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
for run in 1 2; do
  for tiles in default bwd_rows4_m64n64w8 bwd_rows4_m64n32w4s3; do
    [ $SECONDS -gt 500 ] && break 2
    cfg=null; [ $tiles != default ] && cfg=benchmarks/scripts/session14/$tiles.json
    timeout $((590 - SECONDS)) python3 scripts/bench_attention.py "methods=[fb_bias,fb_factors]" "ranks=[32]" \
      "triangle.sizes=[1536,2048]" "single.sizes=[]" "diffusion.sizes=[]" kernel_configs=$cfg \
      output_dir="$OUT/rows4_ab/${tiles}_$run" > "$OUT/rows4_ab_${tiles}_$run.log" 2>&1
    echo "rows4 $tiles run $run rc=$? ${SECONDS}s"; grep -E "^\| triangle" "$OUT/rows4_ab/${tiles}_$run/results.md"
  done
done
echo "total ${SECONDS}s"
