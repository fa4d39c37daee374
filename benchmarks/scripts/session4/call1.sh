#!/bin/bash
# Session 4, device call 1 (H100/H200): trunk + diffusion-attention diagnosis, then the
# real-size fine-tuning run. Results under $OUT.
source .devsite/setup.sh > /tmp/setup.log 2>&1; tail -3 /tmp/setup.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
mkdir -p $OUT/diag $OUT/ft
SECONDS=0
timeout 250 python3 benchmarks/scripts/session4/diag_trunk.py $OUT/diag all > $OUT/diag/stdout.log 2>&1; echo "diag rc=$? ${SECONDS}s"
timeout 290 bash benchmarks/scripts/session4/finetune_gpu.sh /tmp/ft $OUT/ft 100 > $OUT/ft/log.txt 2>&1; echo "ft rc=$? ${SECONDS}s"
tail -c 1500 $OUT/ft/log.txt
tail -n 30 $OUT/diag/stdout.log | grep -v "^  " | tail -5
