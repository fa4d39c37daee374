#!/bin/bash
# Session 4, device call 3 (H200): GPU tests of the new kernels / modules, the trunk and
# diffusion-attention diagnosis after the layer-norm / chunking / fused-AdaLN changes, and the
# full Protenix structure benchmark (1UBQ, 7WUX A2B2; original / exact / lowrank, CUDA graphs).
source .devsite/setup.sh > /tmp/setup.log 2>&1; tail -1 /tmp/setup.log
mkdir -p $OUT/diag; SECONDS=0
timeout 90 python3 -m pytest -q -x tests/test_layer_norm.py tests/test_adaptive_layer_norm.py tests/test_diffusion_attention.py \
  tests/test_modules.py > $OUT/gpu_tests.txt 2>&1; echo "tests rc=$? ${SECONDS}s"; tail -2 $OUT/gpu_tests.txt
timeout 150 python3 benchmarks/scripts/session4/diag_trunk.py $OUT/diag all > $OUT/diag/stdout.log 2>&1; echo "diag rc=$? ${SECONDS}s"
grep -A9 "per-module CUDA-event" $OUT/diag/diag.txt; grep "trunk .*get_pairformer" $OUT/diag/diag.txt; grep "^|" $OUT/diag/diag.txt
timeout 300 python3 scripts/benchmark.py model=base "samples=[1ubq,7wux_a2b2]" "variants=[original,exact,lowrank]" \
  cuda_graphs=true warmup=1 repeats=1 "+overrides={model.N_cycle:4}" output_dir=$OUT/structure > $OUT/structure.log 2>&1
echo "structure rc=$? ${SECONDS}s"; grep "^|" $OUT/structure/results.md; rm -rf $OUT/structure/structures
