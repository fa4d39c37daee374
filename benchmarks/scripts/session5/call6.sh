#!/bin/bash
# Session 5, device call 6 (H200), issue 14: the recorded fuzz run after the backward-tile fix
# (8 warps where the padded rank exceeds the padded head dim) and the TF32 tolerance scale, and
# the GPU kernel tests with the two regression cases. Results under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
SECONDS=0
timeout 300 python3 scripts/fuzz_op.py cases=320 named=true device=cuda workers=12 timeout_s=280 \
  output_dir=$OUT/fuzz > $OUT/fuzz.log 2>&1; echo "fuzz rc=$? ${SECONDS}s"
rm -rf $OUT/fuzz/.hydra; head -16 $OUT/fuzz/results.md; grep -A12 "^## Failures" $OUT/fuzz/results.md | head -14
timeout 200 python3 -m pytest -q tests/test_kernel_gpu.py > $OUT/gpu_tests.txt 2>&1; echo "tests rc=$? ${SECONDS}s"; tail -3 $OUT/gpu_tests.txt
