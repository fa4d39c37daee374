#!/bin/bash
# Session 13, device call 2 (H200, no carry, ~9 min), from the repository root; results under $OUT.
# Issue 17 at large N: the program order of the backward (GRID_ORDER 3: chunks of GRID_GROUP row
# groups side by side for each (key block, head), so the row-shared dS sum's tiles get that many
# row groups' adds while in L2, against the default heads-fastest order, where ~2 row groups run
# side by side and the whole dS sum (64 MB fp32 at N = 2048, more than L2) is swept per wave), and
# of the forward (the same order 3: each chunk's K / V and its bias rows stay in L2; order 2 would
# re-read every row's K / V once per query block). Variants alternate, each in its own process
# (the orders are read at import), the most wanted first (a variant that no longer fits is cut).
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session13}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
SECONDS=0
AB="python3 benchmarks/scripts/session13/attention_ab.py --out $OUT/grid_order_ab.jsonl"
run() { local label=$1; shift; env "$@" timeout $((570 - SECONDS)) $AB --label "$label" $EXTRA > "$OUT/ab_$label.log" 2>&1; echo "$label rc=$? ${SECONDS}s"; }
EXTRA="--methods sdpa_floor --sizes 2048,1536,1024,1170" run floor PFB_X=0
EXTRA="" run default1 PFB_X=0
EXTRA="--no-fwd" run bwd3g8_1 PFB_GRID_ORDER_BWD=3 PFB_GRID_GROUP=8
EXTRA="--methods fb_bias" run fwd3g8_1 PFB_GRID_ORDER_FWD=3 PFB_GRID_GROUP=8
EXTRA="--no-fwd --methods fb_bias" run bwd3g16 PFB_GRID_ORDER_BWD=3 PFB_GRID_GROUP=16
EXTRA="" run default2 PFB_X=0
EXTRA="--no-fwd" run bwd3g8_2 PFB_GRID_ORDER_BWD=3 PFB_GRID_GROUP=8
EXTRA="--methods fb_bias" run fwd3g8_2 PFB_GRID_ORDER_FWD=3 PFB_GRID_GROUP=8
EXTRA="--no-fwd --methods fb_bias" run bwd3g4 PFB_GRID_ORDER_BWD=3 PFB_GRID_GROUP=4
python3 - "$OUT/grid_order_ab.jsonl" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
t = collections.defaultdict(list)
for r in rows:
    t[(r["n"], r["method"])].append(f'{r["label"]} {r.get("fwd_ms", float("nan")):.3f}/{r["fwd_bwd_ms"]:.3f}')
for k in sorted(t):
    print(k, " | ".join(t[k]))
PY
echo "total ${SECONDS}s"
