#!/bin/bash
# Session 12, last device call (H200, carry [".devsite"] for hydra, ~9.5 min):
#   1. the forward before / after one key block is peeled off its loop (ptxas serialised every
#      wgmma of the dense-bias forward without it, C7515), with the default 4 warps and with 8;
#      prev_kernel/: the package before (untracked, sent with the tree; PYTHONPATH puts it first);
#   2. issue 17's record, our half (scripts/session9/attention_record.sh PART=ours), with the time left.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for V in prev peel; do
  P=$PWD; [ $V = prev ] && P=$PWD/prev_kernel
  PYTHONPATH=$P timeout 100 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_$V" --stages fwd_sweep \
    --fwd-sizes 1024,1170,2048 --fwd-candidates default,m64n64w8s3r2 --budget-s 85 > "$OUT/fwd_$V.log" 2>&1
  echo "fwd $V rc=$? ${SECONDS}s"; grep -A7 "forward sweep" "$OUT/fwd_$V/summary.txt" | head -7
  grep -m1 "pairformer_fb" "$OUT/fwd_$V.log"
done
SITE=/tmp/site LIMIT=$((575 - SECONDS)) PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
