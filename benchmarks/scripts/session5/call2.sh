#!/bin/bash
# Session 5, device call 2 (H200), issue 14: call 1's fuzz run again (its workers failed at start:
# set_device("cuda") without an index), and the GPU kernel tests with a longer limit (call 1's
# 120 s cut them off after 54 passed). Results under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
SECONDS=0
timeout 320 python3 scripts/fuzz_op.py cases=320 named=true device=cuda workers=12 timeout_s=290 \
  output_dir=$OUT/fuzz > $OUT/fuzz.log 2>&1; echo "fuzz rc=$? ${SECONDS}s"
rm -rf $OUT/fuzz/.hydra; head -12 $OUT/fuzz/results.md; grep -A12 "^## Failures" $OUT/fuzz/results.md | head -14
grep -A12 "^## Slowest" $OUT/fuzz/results.md
FUZZ_CASES=24 timeout $((580 - SECONDS)) python3 -m pytest -q tests/test_kernel_gpu.py tests/test_kernel_interpret.py \
  tests/test_fuzz.py > $OUT/gpu_tests.txt 2>&1; echo "tests rc=$? ${SECONDS}s"; tail -3 $OUT/gpu_tests.txt
