#!/bin/bash
# Session 6, device call(s) (H200), issue 18: the Protenix ladder -- full inference of the base
# model (v1.0.0 architecture, random weights) at 1,024 ... 7,168 tokens (the chains of 7WUX A2B2
# repeated), stock ("original": cuEquivariance when its wheels are installed, else Protenix's
# Triton triangle attention) against patched exact, 5 diffusion samples; per rung: ok / oom /
# error, peak GPU memory, seconds per phase. Not run yet (written in a session without a GPU).
#
#   bash benchmarks/scripts/session6/ladder_call.sh PART      (PART = 1 ... 6; default 1)
#
# One 10-minute call cannot hold the whole ladder: a trunk cycle costs ~N^3 (at 1,170 tokens 2.26 s
# stock, 1.39 s exact per cycle in session 4, i.e. ~320 s exact per cycle at 7,168), so the ladder
# is split into parts that add to ONE results folder (resume=true): each call reads
# benchmarks/ladder_h200/results.json if the working tree has it (copy the previous call's
# $OUT/ladder_h200/* there first), runs the rungs it lacks and writes the folder back to
# $OUT/ladder_h200. Estimated times (session 4's per-cycle and per-step times scaled by N^3 and N^2,
# plus ~1.5 min of set-up, model build and first-call kernel compiles):
#   PART 1: 1,024 (4 cycles, 200 steps) and 2,048 / 3,072 / 4,096 (1 cycle, 20 steps), both variants  ~7.5 min
#   PART 2: 5,120, both variants (1 cycle, 20 steps)                                                   ~8 min
#   PART 3: 6,144, exact first, then the original if time is left (or until it runs out of memory)     ~6-10 min
#   PART 4: 7,168, exact (the original only where PART 3 showed it fits)                               ~8 min
# Rungs from 2,048 on run 1 cycle and 20 diffusion steps (long_rungs; the table marks them), always
# 5 samples. time_budget_s stops the ladder from starting a run its estimate says would not end
# before the call's limit; results are rewritten after every run, so a call cut short keeps them.
#
# Needs (carry: [".whl"]): .whl/ with the wheels the device image lacks -- protenix==2.0.0 and the
# Protenix part of requirements-hosts.txt (rdkit, optree, scipy), biotite (+ msgpack), biopython,
# hydra-core, omegaconf, antlr4-python3-runtime, tmtools, matplotlib if missing, and for the stock
# baseline cuequivariance, cuequivariance-torch, cuequivariance-ops-torch-cu12 (see benchmarks/README.md:
# how session 3 / 4 carried them). LAYERNORM_TYPE=torch by default (Protenix's fused CUDA layer
# norm is compiled at import, ~1-2 min of nvcc): give LAYERNORM_TYPE=fast_layernorm to build it.
#
# Session 7 (no device either): the patched variants also run Protenix's lean host methods
# (patch_model lean_memory, default: the confidence head one sample per call -- its pae / pde
# logits, in host memory beyond 2,000 tokens, would need 135 GiB of the machine's 128 GiB at
# 6,144 tokens with the host's loop, 108 GiB this way -- and the diffusion's pair conditioning in
# rows). Records now carry peak_host_gib; host_memory_check (default on) skips a run whose host
# memory, scaled from the previous rung, would not fit, instead of the kernel killing the ladder:
# expect stock at 6,144 to be "skipped: host memory" if its 5,120 rung is in the results. PART 5
# runs stock at 6,144 anyway (host_memory_check=false): it may run out of GPU memory first (a
# measured oom), or the kernel may end the process at the confidence head (the log says Killed;
# the earlier records are safe, results are written after every run). PART 6 (optional): patched
# exact at 5,120 without the lean host methods (lean_memory=false), into its own folder
# (benchmarks/ladder_h200/lean_off), to measure what they save on the GPU and the host.
PART=${1:-1}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LAYERNORM_TYPE=${LAYERNORM_TYPE:-torch}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, protenix, biotite, Bio, hydra, matplotlib; print(torch.__version__, triton.__version__)" \
  || { echo "missing packages: fill .whl/ (see the header)"; exit 1; }
python3 -c "import cuequivariance_torch, cuequivariance_ops_torch" 2>/dev/null && echo "stock: cuequivariance" \
  || echo "stock: Protenix's triattention (no cuequivariance wheels)"
case $PART in
  1) TOKENS="[1024,2048,3072,4096]"; VARIANTS="[original,exact]" ;;
  2) TOKENS="[5120]"; VARIANTS="[original,exact]" ;;
  3) TOKENS="[6144]"; VARIANTS="[exact,original]" ;;
  4) TOKENS="[7168]"; VARIANTS="[exact]" ;;
  5) TOKENS="[6144]"; VARIANTS="[original]"; EXTRA="host_memory_check=false" ;;
  6) TOKENS="[5120]"; VARIANTS="[exact]"; EXTRA="lean_memory=false"; DIR=benchmarks/ladder_h200/lean_off ;;
  *) echo "PART must be 1 ... 6"; exit 2 ;;
esac
SECONDS=0
timeout $((585 - SECONDS)) python3 scripts/bench_ladder.py model=base "tokens=$TOKENS" "variants=$VARIANTS" \
  cycles=4 long_rungs.from_tokens=2048 long_rungs.cycles=1 long_rungs.steps=20 samples=5 \
  time_budget_s=$((540 - SECONDS)) resume=true output_dir=${DIR:-benchmarks/ladder_h200} ${EXTRA:-} > $OUT/ladder_part$PART.log 2>&1
echo "ladder part $PART rc=$? ${SECONDS}s"
D=${DIR:-benchmarks/ladder_h200}; O=$OUT/${D#benchmarks/}; mkdir -p $O && cp $D/results.* $D/ladder.png $O/ 2>/dev/null
free -g | head -2; grep "^|" $D/results.md; tail -c 1500 $OUT/ladder_part$PART.log | grep -v "^ladder:"
