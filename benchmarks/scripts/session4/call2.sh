#!/bin/bash
# Session 4, device call 2: the real-size fine-tuning run (issue 6). Results under $OUT/ft.
source .devsite/setup.sh > /tmp/setup.log 2>&1; tail -1 /tmp/setup.log
mkdir -p $OUT/ft; SECONDS=0
timeout 560 bash benchmarks/scripts/session4/finetune_gpu.sh /tmp/ft2 $OUT/ft 80 > $OUT/ft/log.txt 2>&1; echo "ft rc=$? ${SECONDS}s"
grep "^\[" $OUT/ft/log.txt; tail -c 1200 $OUT/ft/log.txt; ls $OUT/ft
