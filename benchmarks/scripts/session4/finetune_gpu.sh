#!/bin/bash
# Session 4, issue 6: one real-size fine-tuning run on the device (Protenix base architecture,
# random weights, converted to lowrank R=32 with the conversion's least-squares initialisation only
# (FIT_STEPS=0 Adam steps, 64-token crops of 1CRN / 1UBQ), then fine-tuned by bias distillation on 384-token crops, bf16 autocast).
# (Session 3's attempt spent its whole 330 s in the conversion's fit; session 4's first, with 50
# Adam steps on 128-token crops of two samples, 227 s: the fit is per module, 144 of them.) Usage (repo root, host packages on PYTHONPATH): bash benchmarks/scripts/session4/finetune_gpu.sh WORK_DIR RESULT_DIR [STEPS]
set -e
D=${1:-ft_gpu}; R=${2:-$D/result}; STEPS=${3:-120}; mkdir -p $D $R
stamp() { echo "[$(date +%T)] $*"; }
stamp "build + save base (random weights)"
python3 - "$D" <<'PY'
import sys, torch
from pairformer_fb.hosts.presets import randomise_
from pairformer_fb.hosts.protenix.presets import build_protenix
m = randomise_(build_protenix("base", cpu=False)[0], seed=0)
torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()}}, f"{sys.argv[1]}/base.pt")
PY
stamp "convert"
python3 scripts/convert_checkpoint.py input=$D/base.pt output=$D/base_fb.pt model=base \
    "fit.samples=[data_samples/1crn.fasta,data_samples/1ubq.fasta]" "fit.max_tokens=[64]" fit.steps=${FIT_STEPS:-0} progress=false
cp $D/base_fb.pt.report.md $R/convert_report.md 2>/dev/null || true
stamp "finetune"
python3 scripts/finetune.py checkpoint=$D/base_fb.pt output_dir=$R/run output_name=$D/finetuned_fb.pt model=base data=gpu \
    trainer.max_steps=$STEPS trainer.save_every=0 trainer.log_every=5 progress=false $FT_ARGS
stamp "done"
rm -f $D/base.pt $D/base_fb.pt $D/finetuned_fb.pt
