#!/bin/bash
# Session 6 wrote it (no device was lent then); for the next device call (H200, ~3-5 min):
# issue 15's last item -- the GPU tests after the restructure. Runs every test marked gpu (the
# ones a CPU machine skips: kernels, modules, layer norms, CUDA graphs, the hosts' diffusion
# attentions, the GPU fuzz slice) and a short fuzz run, results under $OUT. The host packages
# come from .whl/ (carry: [".whl"]; see benchmarks/README.md); without them the host tests skip.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LAYERNORM_TYPE=${LAYERNORM_TYPE:-torch}
OUT=${OUT:-bench_out/session6_gpu_tests}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$? ${SECONDS}s"; tail -5 "$OUT/gpu_tests.txt"
timeout 150 python3 scripts/fuzz_op.py cases=60 named=true device=cuda workers=12 timeout_s=130 \
  output_dir="$OUT/fuzz" > "$OUT/fuzz.log" 2>&1; echo "fuzz rc=$? ${SECONDS}s"
head -16 "$OUT/fuzz/results.md" 2>/dev/null; grep -A12 "^## Failures" "$OUT/fuzz/results.md" 2>/dev/null | head -14
