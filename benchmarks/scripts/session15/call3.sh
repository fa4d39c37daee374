#!/bin/bash
# Session 15, third device call (carry [".devsite"], ~250 s on a warm H100): session14/ab.sh rows4
# cut to the time left: the default backward tiles, the dS sum left to the separate
# _ds_sum_kernel (bwd_unfused_ds.json) and four rows per program (bwd_rows4_m64n64w8.json), then
# the first two again, triangle N = 1536 / 2048, dense bias and factors R = 32.
export PYTHONUNBUFFERED=1; OUT=${OUT:-bench_out/session15}; mkdir -p "$OUT"
tar -xJf .devsite/site.tar.xz -C /tmp; export PYTHONPATH=/tmp/site:$PWD; SECONDS=0
for side in default bwd_unfused_ds bwd_rows4_m64n64w8 default_2 bwd_unfused_ds_2; do
  [ $SECONDS -gt 200 ] && break
  s=${side%_2}; cfg=null; [ -f benchmarks/scripts/session14/$s.json ] && cfg=benchmarks/scripts/session14/$s.json
  timeout $((265 - SECONDS)) python3 scripts/bench_attention.py "methods=[fb_bias,fb_factors]" "ranks=[32]" \
    "triangle.sizes=[1536,2048]" "single.sizes=[]" "diffusion.sizes=[]" kernel_configs=$cfg \
    output_dir="$OUT/rows4_ab/$side" > "$OUT/rows4_$side.log" 2>&1
  echo "$side rc=$? ${SECONDS}s"; grep -E "^\| triangle" "$OUT/rows4_ab/$side/results.md"
done
