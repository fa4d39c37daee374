#!/bin/bash
# Session 4, device call 4 (H200): the GPU tests of the new kernels / modules, the structure
# benchmark with our diffusion attentions in bf16 (diffusion_dtype=bf16) at 1,170 and 352 tokens,
# then the real-size fine-tuning run (issue 6).
source .devsite/setup.sh > /tmp/setup.log 2>&1; tail -1 /tmp/setup.log
SECONDS=0
timeout 100 python3 -m pytest -q tests/test_layer_norm.py tests/test_adaptive_layer_norm.py tests/test_diffusion_attention.py \
  tests/test_modules.py > $OUT/gpu_tests.txt 2>&1; echo "tests rc=$? ${SECONDS}s"; tail -2 $OUT/gpu_tests.txt
timeout 170 python3 scripts/benchmark.py model=base "samples=[7wux_b,7wux_a2b2]" "variants=[original,exact]" diffusion_dtype=bf16 \
  cuda_graphs=true warmup=1 repeats=1 "+overrides={model.N_cycle:4}" output_dir=$OUT/structure_bf16 > $OUT/structure_bf16.log 2>&1
echo "structure rc=$? ${SECONDS}s"; grep "^|" $OUT/structure_bf16/results.md; rm -rf $OUT/structure_bf16/structures
mkdir -p $OUT/ft
timeout $((580 - SECONDS)) bash benchmarks/scripts/session4/finetune_gpu.sh /tmp/ft4 $OUT/ft 50 > $OUT/ft/log.txt 2>&1; echo "ft rc=$? ${SECONDS}s"
grep "^\[" $OUT/ft/log.txt; tail -4 $OUT/ft/run/train_log.csv 2>/dev/null; grep -v Warning $OUT/ft/log.txt | tail -3
