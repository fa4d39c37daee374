#!/bin/bash
# Session 6 (issue 17), ONE device call (H200, under 8 minutes; kind nvidia-h200), from the
# repository root; results under $OUT. Measures the backward (bwd_profile.py beside this):
#   1. profile, N = 1024 / 1170 triangle shape (N rows x 4 heads x 32, bf16): fwd and fwd+bwd
#      medians and CUDA time per kernel name for SDPA (floor), ours without bias, dense bias
#      without / with its gradient, shared factors R = 32, and each with the opt-in switches
#      +pad (tiles.DS_TILE_PAD) / +stagger (tiles.DQ_STAGGER) / both;
#   1b. (session 10) the forward's tile candidates (FWD_CANDIDATES: four rows per program, ...) at
#      N in {1024, 1170, 256, 512, 2048}, dense bias and factors, outputs checked against the default;
#   2. others: single attention (16 x 24) and the diffusion transformer's (5 samples, 16 x 48),
#      floor / default / both switches, with the summed kernel time (host-bound or not);
#   3. the diffusion shape's backward configs (1, 2 rows per program; 4, 8 warps) x switches;
#   4. sweep, N in {1024, 1170, 256, 384, 512, 768, 1000, 1536, 2048}: 8 backward tile configs
#      x switches off / both on, dense bias and factors, gradients checked against the default;
#   5. FlexAttention + bias at 1024 / 1170 if time is left.
# Expected: ~6-7 min (estimate: 60 s profile, 40 s others, 30 s diffusion configs, ~150 s
# sweep incl. ~70 kernel compiles, up to 2 x 60 s FlexAttention compiles); the python part
# stops starting new measurements at --budget-s and records what it skipped. Needs no host packages (.whl only if carried).
# CPU check without a device: python benchmarks/scripts/session6/bwd_profile.py --out /tmp/x --dry-run
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session6}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
nproc; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
SECONDS=0
timeout 455 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT" --budget-s 410 > "$OUT/bwd_profile.log" 2>&1
echo "bwd_profile rc=$? ${SECONDS}s"
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader
if [ -f "$OUT/summary.txt" ]; then cat "$OUT/summary.txt"; else tail -40 "$OUT/bwd_profile.log"; fi
