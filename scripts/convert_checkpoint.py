"""Convert a host checkpoint to a FlashBias checkpoint, or back (configs/convert_checkpoint.yaml).

    python scripts/convert_checkpoint.py input=IN output=OUT [host=auto|protenix|boltz|openfold3] \
        [model=PRESET] [patch.mode=lowrank] [patch.rank=R] [strip=true]

Prints the per-module bias-approximation errors and writes OUT.report.json / OUT.report.md.
Exits non-zero, with the reason on stderr and nothing written, on bad input.
"""

import os
import sys

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from pairformer_fb.modules import FactorConfig
from pairformer_fb.tools.checkpoint import CheckpointError
from pairformer_fb.tools.convert import convert_checkpoint
from pairformer_fb.tools.presets import PresetError


@hydra.main(config_path="../configs", config_name="convert_checkpoint", version_base=None)
def main(cfg: DictConfig) -> None:
    p, fit = cfg.patch, cfg.fit
    listed = lambda v: None if v is None else list(OmegaConf.to_container(v))
    try:
        report = convert_checkpoint(
            to_absolute_path(cfg.input), to_absolute_path(cfg.output), host=cfg.host, model=cfg.model,
            mode=p.mode, factor_config=FactorConfig(rank=p.rank, width=p.factor_width, depth=p.factor_depth),
            stacks=listed(p.stacks), kinds=listed(p.kinds), blocks=listed(p.blocks),
            samples=None if fit.samples is None else [to_absolute_path(f) for f in fit.samples],
            max_tokens=fit.max_tokens, fit_steps=fit.steps, fit_lr=fit.lr, seed=fit.seed, strip=cfg.strip,
            use_ema=cfg.use_ema, allow_pickle=cfg.allow_pickle, device=cfg.device, write_report=cfg.report,
            progress=cfg.progress)
    except (CheckpointError, PresetError, ValueError, FileNotFoundError, IsADirectoryError, ImportError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown())


if __name__ == "__main__":
    main()
