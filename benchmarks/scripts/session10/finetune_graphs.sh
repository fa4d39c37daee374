#!/bin/bash
# Issue 17's fine-tuning target on the device (H200, carry [".devsite"]; ~8 min): session 4's
# real-size run (benchmarks/scripts/session4/finetune_gpu.sh: Protenix base, random weights,
# lowrank R = 32 from the least-squares initialisation, 384-token crops, bf16 autocast), converted
# once, then fine-tuned STEPS steps twice on the same data and cycle draws: trainer.cuda_graphs
# false (main's eager steps, factor networks in the last cycle only) and true (the recycling
# cycles without gradients replayed from CUDA graphs). Then finetune_compare.py: steps/s against session 4's
# 0.61 (110 steps), seconds per cycle fitted per run, and the two loss curves against each other.
#   bash benchmarks/scripts/session10/finetune_graphs.sh [STEPS=110]     (END_S=590: the runs end by then)
# Estimate: build 45 s + convert 105 s (session 4's log) + two runs of ~150-200 s; a warm machine
# that has /tmp/ftg/base_fb.pt skips the first two.
STEPS=${1:-110}
STAMP=$(stat -c %s .devsite/site.tar.xz)
[ "$(cat /tmp/site/.stamp 2>/dev/null)" = "$STAMP" ] || { rm -rf /tmp/site; tar -xJf .devsite/site.tar.xz -C /tmp && echo "$STAMP" > /tmp/site/.stamp; } || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LAYERNORM_TYPE=${LAYERNORM_TYPE:-torch}
D=/tmp/ftg; R=$OUT/finetune_graphs_h200; mkdir -p $D $R
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
stamp() { echo "[$(date +%T) ${SECONDS}s] $*"; }
if [ ! -f $D/base_fb.pt ]; then
  stamp "build + save base (random weights)"
  python3 - "$D" <<'PY' > $R/build.log 2>&1 || { tail -5 $R/build.log; exit 1; }
import sys, torch
from pairformer_fb.hosts.presets import randomise_
from pairformer_fb.hosts.protenix.presets import build_protenix
m = randomise_(build_protenix("base", cpu=False)[0], seed=0)
torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()}}, f"{sys.argv[1]}/base.pt")
PY
  stamp "convert"
  python3 scripts/convert_checkpoint.py input=$D/base.pt output=$D/base_fb.pt model=base \
      "fit.samples=[data_samples/1crn.fasta,data_samples/1ubq.fasta]" "fit.max_tokens=[64]" fit.steps=0 \
      progress=false > $R/convert.log 2>&1 || { tail -5 $R/convert.log; exit 1; }
  rm -f $D/base.pt
fi
for G in ${RUNS:-true false}; do  # RUNS="false": one of them (a warm machine keeps /tmp/ftg); the graphs first: if the call's time runs out, the eager run is the one cut short
  LEFT=$((${END_S:-590} - SECONDS)); [ $LEFT -gt 60 ] || break
  stamp "finetune cuda_graphs=$G (at most ${LEFT}s)"
  timeout $LEFT python3 scripts/finetune.py checkpoint=$D/base_fb.pt output_dir=$R/graphs_$G \
      output_name=$D/ft_$G.pt overwrite=true model=base data=gpu trainer.max_steps=$STEPS trainer.save_every=0 \
      trainer.log_every=5 trainer.cuda_graphs=$G progress=false > $R/graphs_$G.log 2>&1
  stamp "rc=$?"; grep -E "steps/s|CUDA graphs" $R/graphs_$G/finetune_report.md
  rm -f $D/ft_$G.pt
done
python3 benchmarks/scripts/session10/finetune_compare.py $R/graphs_false $R/graphs_true | tee $R/compare.md
