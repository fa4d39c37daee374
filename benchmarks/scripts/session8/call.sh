#!/bin/bash
# Session 8, device calls (H200): issue 18's Protenix ladder, in parts that add to one results
# folder (resume=true), and issue 15's GPU tests in the time a part leaves.
#
#   bash benchmarks/scripts/session8/call.sh END_S TOKENS VARIANTS [TOKENS VARIANTS ...]
#     e.g.  bash benchmarks/scripts/session8/call.sh 540 "[6144]" "[exact]" "[1024,2048,4096]" "[original,exact]"
#
# The ladder parts run first, in order, until END_S seconds into the call (each with the time
# left as its budget; EXTRA="key=value ..." adds settings), then every test marked gpu with the time left
# (pytest-xdist, 8 workers: the tests are correctness checks, not timings) unless SKIP_TESTS=1;
# TESTS="..." names other pytest arguments. BUDGET=null: the first part runs without the ladder's
# time-budget estimate, bounded by timeout only (stock at 6,144 tokens: estimated ~590 s from patched's
# measured growth, more than a call leaves, though it may end sooner in an out-of-memory).
# Settings as session 6's ladder_call.sh: base model (random weights), 5 samples, 4 cycles /
# 200 steps below 2,048 tokens, 1 cycle / 20 steps from 2,048 on.
# Packages: .devsite/site.tar.xz (carry [".devsite"]): the host wheels the device image lacks,
# unpacked (protenix 2.0.0, rdkit, optree, ml_collections, biotite 1.6.0 with its CCD cut to the
# standard residues, biopython, tmtools, hydra-core, omegaconf, antlr4, cuequivariance
# 0.13.0 + torch + ops-torch-cu13 + ops-cu13, platformdirs; xz -9), see benchmarks/README.md. A warm machine keeps them,
# and the results so far (/tmp/ladder_keep), between calls.
END_S=$1; shift  # the ladder parts end by then (seconds since the start); the tests get the rest
STAMP=$(stat -c %s .devsite/site.tar.xz)
[ "$(cat /tmp/site/.stamp 2>/dev/null)" = "$STAMP" ] || { rm -rf /tmp/site; tar -xJf .devsite/site.tar.xz -C /tmp && echo "$STAMP" > /tmp/site/.stamp; } || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LAYERNORM_TYPE=${LAYERNORM_TYPE:-torch}
D=${DIR:-benchmarks/ladder_h200}; K=/tmp/ladder_keep/${D#benchmarks/}
mkdir -p "$D" "$K"
[ -f "$K/results.json" ] && cp "$K"/results.* "$D"/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; free -g | sed -n 2p
python3 -c "import torch, triton, protenix, biotite, Bio, hydra, cuequivariance_torch; print(torch.__version__, triton.__version__)" || exit 1
PART=0
while [ $# -ge 2 ]; do
  PART=$((PART + 1)); LEFT=$((END_S - SECONDS))
  [ $LEFT -gt 60 ] || break
  timeout $LEFT python3 scripts/bench_ladder.py model=base "tokens=$1" "variants=$2" \
    cycles=4 long_rungs.from_tokens=2048 long_rungs.cycles=1 long_rungs.steps=20 samples=5 \
    time_budget_s=${BUDGET:-$((LEFT - 15))} resume=true output_dir="$D" ${EXTRA:-} > "$OUT/ladder$PART.log" 2>&1
  echo "ladder part $PART ($1 $2) rc=$? ${SECONDS}s"; shift 2; unset BUDGET
  cp "$D"/results.* "$D"/ladder.png "$K"/ 2>/dev/null
  tail -c 1500 "$OUT/ladder$PART.log" | tr '\r' '\n' | grep -v "^ladder:\|^|\|^$" | tail -4
done
O=$OUT/${D#benchmarks/}; mkdir -p "$O"; cp "$K"/* "$O"/
grep "^|" "$D/results.md"
LEFT=$((585 - SECONDS))
if [ -z "$SKIP_TESTS" ] && [ $LEFT -gt 40 ]; then
  timeout $LEFT python3 -m pytest -q ${TESTS:--m gpu tests} -n 8 -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests rc=$? ${SECONDS}s"; tail -4 "$OUT/gpu_tests.txt"
fi
