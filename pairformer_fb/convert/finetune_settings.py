"""What a fine-tuning config (``configs/finetune/``) may hold, checked before any work by
``convert.finetune.finetune``: one ValueError naming the first bad setting."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cli import COMMON_SETTINGS, Setting, check_settings

# the scalar settings checked before any work (cli.check_settings): (dotted key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    *COMMON_SETTINGS,  # device, seed
    ("overwrite", "bool", None),
    ("progress", "bool", None),
    ("trainer.max_steps", "int", 1),
    ("trainer.save_every", "int", 0),
    ("trainer.val_every", "int", 0),
    ("trainer.log_every", "int", 1),
    ("trainer.grad_clip", "number", 0),
    ("trainer.bf16", "bool", None),
    ("trainer.tensorboard", "bool", None),
    ("trainer.find_unused_parameters", "bool", None),
    ("trainer.cuda_graphs", "bool", None),
    ("trainer.cuda_graphs_max", "int", 1),
    ("data.crop_size", "int", 1),
    ("data.n_val", "int", 0),
    ("optimizer.lr", "number", 0),
    ("optimizer.weight_decay", "number", 0),
    ("optimizer.eps", "number", 0),
    ("schedule.warmup_steps", "int", 0),
    ("schedule.total_steps", "int", 1),
    ("schedule.min_lr_ratio", "number", 0),
    ("model.host", ("protenix",), None),  # fine-tuning supports Protenix only
    ("model.n_cycle", "int", 1),
)


def check_finetune_settings(cfg: Mapping[str, Any]) -> None:
    """SETTINGS (cli.check_settings), then what their kinds cannot say: Adam's two betas in
    [0, 1), a final LR ratio of at most 1, an msa_dir that is a folder."""
    check_settings(cfg, SETTINGS)
    betas = cfg["optimizer"].get("betas")
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    ratio = cfg["schedule"].get("min_lr_ratio")
    if ratio is not None and ratio > 1:
        raise ValueError(f"schedule.min_lr_ratio must be <= 1 (final LR / peak LR), got {ratio!r}")
    msa_dir = cfg["data"].get("msa_dir")
    if msa_dir is not None and not Path(msa_dir).is_dir():
        raise ValueError(f"data.msa_dir={msa_dir!r} is not a folder")
