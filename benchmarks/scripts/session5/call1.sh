#!/bin/bash
# Session 5, device call 1 (H200), issue 14: the op fuzz suite with cold kernel caches (first
# calls timed, compilation included), the GPU kernel tests, and the op benchmark at N = 1024 /
# 1170 (steady state after the fitted tile table). Results under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
SECONDS=0
timeout 300 python3 scripts/fuzz_op.py cases=320 named=true device=cuda workers=12 timeout_s=270 \
  output_dir=$OUT/fuzz > $OUT/fuzz.log 2>&1; echo "fuzz rc=$? ${SECONDS}s"
head -12 $OUT/fuzz/results.md; grep -A12 "^## Failures" $OUT/fuzz/results.md | head -14
timeout 240 python3 -m pytest -q tests/test_kernel_gpu.py tests/test_kernel_interpret.py tests/test_validation.py tests/test_fuzz.py \
  > $OUT/gpu_tests.txt 2>&1; echo "tests rc=$? ${SECONDS}s"; tail -3 $OUT/gpu_tests.txt
timeout $((590 - SECONDS)) python3 scripts/bench_attention.py "triangle.sizes=[1024,1170]" "single.sizes=[768]" \
  "methods=[sdpa_floor,flex_bias,fb_bias,fb_factors]" "ranks=[32]" output_dir=$OUT/attention > $OUT/attention.log 2>&1
echo "bench rc=$? ${SECONDS}s"; grep "^|" $OUT/attention/results.md | head -20
