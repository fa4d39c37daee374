#!/bin/bash
# Session 5, device call 4: fuzz case #181 bisected, one process per variant, then the case under
# compute-sanitizer (which kernel reads or writes out of bounds).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import sys; sys.path.insert(0, 'benchmarks/session5'); import bisect181; print(' '.join(bisect181.VARIANTS))" \
  | tr ' ' '\n' | xargs -P 6 -I{} sh -c 'timeout 120 python3 benchmarks/scripts/session5/bisect181.py {} 2>&1 | grep -E "^ *[a-zA-Z0-9_]+: |Error" | tail -1 | sed "s/^/{} | /"' \
  | tee $OUT/bisect.txt
timeout 240 compute-sanitizer --tool memcheck --print-limit 5 python3 benchmarks/scripts/session5/bisect181.py as_drawn > $OUT/sanitizer.txt 2>&1
echo "sanitizer rc=$?"; grep -E "Invalid|at .*kernel|by thread|Address|ERROR SUMMARY" $OUT/sanitizer.txt | head -20
