#!/bin/bash
# Issue 17's H200 record, only on an H200 (carry [".devsite"], ~6 min on a warm machine): a call
# that names nvidia-h200 may start an H100, and the H100 record exists (benchmarks/attention_h100/),
# so on any other card this stops at once (exit 3) and costs only the start. Then, here:
#   mkdir -p benchmarks/attention_h200/2026-11-21 && git mv benchmarks/attention_h200/results.* benchmarks/attention_h200/2026-11-21/
#   python benchmarks/scripts/session17/merge_record.py FILES_AT/attention_h200_ours FILES_AT/attention_h200_flex benchmarks/attention_h200
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$CARD" in
  *H200*) ;;
  *) echo "card: $CARD, not an H200: stopping (the H100 record is benchmarks/attention_h100/)"; exit 3 ;;
esac
bash benchmarks/scripts/session12/call4.sh  # writes $OUT/attention_h200_{ours,flex}/ and their logs
