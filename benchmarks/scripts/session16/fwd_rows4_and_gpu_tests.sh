#!/bin/bash
# Session 16, device call (any H100 / H200, carry [".devsite_tests"], ~9.5 min: ~2 min, then ~7.5):
# 1. The forward with four rows per program in 64 x 32 tiles (m64n32w4s3r4), which session 10
#    compiled for sm_90 without spills (benchmarks/session10/fwd_rows_cpu_compile/) but no device
#    ever timed (session 12's sweep timed only the spilling 64 x 64 four-row tiles, 1.6x slower).
#    Four rows read each shared bias tile once for four rows: the dense bias's forward overhead.
#    Against the default (m64 n64, 2 rows) and m64n32 with two rows, triangle shape, two rounds
#    (bwd_profile.py's fwd_sweep: outputs checked against the default's; needs no site packages).
# 2. session8/gpu_tests.sh: every test marked gpu with the three hosts, then a 60-case fuzz run.
export PYTHONUNBUFFERED=1; OUT=${OUT:-bench_out/session16}; mkdir -p "$OUT"
SECONDS=0
for round in 1 2; do
  timeout $((140 - SECONDS)) python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_rows4_$round" \
    --stages fwd_sweep --fwd-sizes 1024,2048,384,768,1536,1170 \
    --fwd-candidates default,m64n32w4s3r4,m64n32w4s3r2 --budget-s $((round * 65 - SECONDS)) > "$OUT/fwd_rows4_$round.log" 2>&1
  rc=$?; echo "fwd sweep round $round rc=$rc ${SECONDS}s"; [ $rc = 0 ] && rm -f "$OUT/fwd_rows4_$round.log"  # at most 8 files come back
  grep -E "^N=|not ok" "$OUT/fwd_rows4_$round/summary.txt"
done
bash benchmarks/scripts/session8/gpu_tests.sh
echo "total ${SECONDS}s"
