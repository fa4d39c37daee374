#!/bin/bash
# Session 5, device call 5: candidate backward tiles for the padded-rank > padded-head-dim case.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for c in c181 d16r64 d16r32 d8r20 d32r32 d32r64bias; do for t in default 64,64,4,2,2 64,32,4,3,2 32,64,4,3,2 64,64,8,3,2 64,64,4,3,1; do
  echo "$c $t"; done; done | xargs -P 8 -L 1 sh -c 'timeout 150 python3 benchmarks/scripts/session5/tiles181.py $0 $1 2>&1 | grep -E ": (ok|fail)|Error" | tail -1 | sed "s/^/$0 $1 | /"' \
  | sort | tee $OUT/tiles.txt | cut -c1-150
