#!/bin/bash
# Session 16, device call (carry [".devsite"], ~3-4 min): session 14's bulk reduce-add threshold
# (tiles.TMA_REDUCE_MIN_SCORES = 2^28 scores per backward) against none
# (PFB_TMA_REDUCE_MIN_SCORES=0), timed from CUDA graph replays (cuda_graphs=true), which leave the
# host out: session 15's eager A/B at the triangle 384 and the diffusion shape 384 lay inside the
# host's noise and was slower with the threshold in both rounds. Alternating, two rounds.
# GRAPHS=false: the same eager (do_bench, host time included), REP_MS (default 200) per case.
export PYTHONUNBUFFERED=1; OUT=${OUT:-bench_out/session16}; mkdir -p "$OUT"
G=${GRAPHS:-true}; AB="$OUT/tma_ab_graphs_$G"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
STAMP=$(stat -c %s .devsite/site.tar.xz)
[ "$(cat /tmp/site/.stamp 2>/dev/null)" = "$STAMP" ] || { rm -rf /tmp/site; tar -xJf .devsite/site.tar.xz -C /tmp && echo "$STAMP" > /tmp/site/.stamp; } || exit 1
export PYTHONPATH=/tmp/site:$PWD
for run in 1 2; do
  for side in threshold always; do
    [ $SECONDS -gt ${LIMIT:-200} ] && break 2
    min=""; [ $side = always ] && min=0
    env ${min:+PFB_TMA_REDUCE_MIN_SCORES=$min} timeout $((${END_S:-280} - SECONDS)) python3 scripts/bench_attention.py \
      "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" "triangle.sizes=[256,384]" "single.sizes=[384]" \
      "diffusion.sizes=[384]" cuda_graphs=$G rep_ms=${REP_MS:-200} output_dir="$AB/${side}_$run" \
      > "${AB}_${side}_$run.log" 2>&1
    echo "$side run $run rc=$? ${SECONDS}s"
    grep -E "^\| (triangle|single|diffusion)" "$AB/${side}_$run/results.md"; rm -f "$AB/${side}_$run/results.json"
  done
done
echo "total ${SECONDS}s"
