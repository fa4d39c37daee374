#!/bin/bash
# Issue 15's last item, for a device call (H200, ~4 min; carry [".devsite_tests"]): every test
# marked gpu with all three hosts installed (the ladder's archive has no Boltz-2 / OpenFold3, so
# session 8's run skipped their GPU tests), skip reasons listed (-rs), then a 60-case fuzz run.
#   bash benchmarks/scripts/session8/make_device_site.sh tests   # here, once: .devsite_tests/
#   bash benchmarks/scripts/session8/gpu_tests.sh                 # there
STAMP=$(stat -c %s .devsite_tests/site_tests.tar.xz) || exit 1
[ "$(cat /tmp/site_t/site/.stamp 2>/dev/null)" = "$STAMP" ] || { rm -rf /tmp/site_t; mkdir -p /tmp/site_t;
  tar -xJf .devsite_tests/site_tests.tar.xz -C /tmp/site_t && echo "$STAMP" > /tmp/site_t/site/.stamp; } || exit 1
export PYTHONPATH=/tmp/site_t/site:$PWD PYTHONUNBUFFERED=1 LAYERNORM_TYPE=${LAYERNORM_TYPE:-torch}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import protenix, boltz, openfold3; print('hosts ok')"
SECONDS=0
timeout 300 python3 -m pytest -q -rs -m gpu tests -n 8 -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$? ${SECONDS}s"; grep -E "^SKIPPED|passed|failed" "$OUT/gpu_tests.txt" | tail -8
timeout 150 python3 scripts/fuzz_op.py cases=60 named=true device=cuda workers=12 timeout_s=130 \
  output_dir="$OUT/fuzz" > "$OUT/fuzz.log" 2>&1; echo "fuzz rc=$? ${SECONDS}s"
head -16 "$OUT/fuzz/results.md" 2>/dev/null; grep -A12 "^## Failures" "$OUT/fuzz/results.md" 2>/dev/null | head -14
