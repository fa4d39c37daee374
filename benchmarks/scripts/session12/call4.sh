#!/bin/bash
# Session 12, device call (H200, carry [".devsite"] for hydra / omegaconf, ~9.5 min): issue 17's
# record, both halves (scripts/session9/attention_record.sh PART=ours, then PART=flex with the
# time left). The image has no hydra, which scripts/bench_attention.py needs (call 3a failed on it).
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
echo "site ${SECONDS}s"
SITE=/tmp/site LIMIT=330 PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "ours ${SECONDS}s"
SITE=/tmp/site LIMIT=$((575 - SECONDS)) PART=flex OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
