#!/bin/bash
# Issue 17's record (H200, no host packages; about 5 min per part): the op against the SDPA floor
# and FlexAttention at the nine triangle N, the single attention and the diffusion
# transformer's shape, fwd and fwd+bwd, into $OUT/attention_h200/ (then here: move the old
# benchmarks/attention_h200/results.* into a dated subfolder and copy these in).
#   PART=ours bash benchmarks/scripts/session9/attention_record.sh   # floor, dense bias, factors R = 32
#   PART=flex bash benchmarks/scripts/session9/attention_record.sh   # floor, FlexAttention (a compile per shape)
export PYTHONPATH=${SITE:+$SITE:}$PWD PYTHONUNBUFFERED=1  # SITE: a folder of packages (hydra, ...) the image lacks
case "${PART:-ours}" in
  ours) METHODS="[sdpa_floor,fb_bias,fb_factors]" ;;
  flex) METHODS="[sdpa_floor,flex_bias]" ;;
  *) echo "PART must be ours or flex"; exit 2 ;;
esac
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout ${LIMIT:-560} python3 scripts/bench_attention.py "methods=$METHODS" "ranks=[32]" \
  "triangle.sizes=[256,384,512,768,1000,1024,1170,1536,2048]" "single.sizes=[384,768,1536,3072]" \
  "diffusion.sizes=[384,768,1170]" output_dir="$OUT/attention_h200_${PART:-ours}" > "$OUT/attention_${PART:-ours}.log" 2>&1
echo "rc=$? ${SECONDS}s"; cat "$OUT/attention_h200_${PART:-ours}/results.md"
