#!/bin/bash
# Session 3, issue 6: one real-size fine-tuning run on the device (Protenix base architecture,
# random weights converted to lowrank R=32, crops of 384 tokens, bf16 autocast).
# Usage (repo root, host packages on PYTHONPATH): bash benchmarks/scripts/session3/finetune_gpu.sh OUT_DIR
set -e
D=${1:-ft_gpu}; mkdir -p $D
python3 - "$D" <<'PY'
import sys, torch
from pairformer_fb.hosts.presets import build_protenix, randomise_
m = randomise_(build_protenix("base", cpu=False)[0], seed=0)
torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()}}, f"{sys.argv[1]}/base.pt")
PY
python3 scripts/convert_checkpoint.py input=$D/base.pt output=$D/base_fb.pt model=base "fit.max_tokens=[256]" fit.steps=100 progress=false
python3 scripts/finetune.py checkpoint=$D/base_fb.pt output_dir=$D/run model=base data=gpu trainer.max_steps=150 trainer.save_every=0 trainer.log_every=10 progress=false
rm -f $D/base.pt $D/base_fb.pt $D/run/*.pt
