r"""Convert a host checkpoint to a FlashBias checkpoint, or back (configs/convert_checkpoint.yaml).

    python scripts/convert_checkpoint.py input=IN output=OUT [host=auto|protenix|boltz|openfold3] \
        [model=PRESET] [patch.mode=lowrank] [patch.rank=R] [strip=true] [overwrite=true]

Prints the per-module bias-approximation errors and writes OUT.report.json / OUT.report.md.
An existing OUT is replaced only with overwrite=true (atomically). Bad input: one line
"convert_checkpoint: error: ..." on stderr, exit status 2, checked before any model work;
nothing is written.
"""

import os

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from hydra.utils import to_absolute_path  # noqa: E402
from omegaconf import ListConfig, OmegaConf  # noqa: E402

from pairformer_fb.cli import main  # noqa: E402


def task(cfg) -> None:
    from pairformer_fb.convert.convert import convert_checkpoint
    from pairformer_fb.modules import FactorConfig

    p, fit = cfg.patch, cfg.fit
    for key in ("stacks", "kinds", "blocks"):
        if p[key] is not None and not isinstance(p[key], ListConfig):
            raise ValueError(f'patch.{key} must be a list or null, e.g. "patch.{key}=[a,b]", got {p[key]!r}')
    if fit.samples is not None and not isinstance(fit.samples, ListConfig):
        raise ValueError(
            f'fit.samples must be a list of FASTA files or null, e.g. "fit.samples=[a.fasta]", got {fit.samples!r}'
        )
    listed = lambda v: None if v is None else list(OmegaConf.to_container(v))
    report = convert_checkpoint(
        to_absolute_path(cfg.input),
        to_absolute_path(cfg.output),
        host=cfg.host,
        model=cfg.model,
        mode=p.mode,
        factor_config=FactorConfig(rank=p.rank, width=p.factor_width, depth=p.factor_depth),
        stacks=listed(p.stacks),
        kinds=listed(p.kinds),
        blocks=listed(p.blocks),
        samples=None if fit.samples is None else [to_absolute_path(f) for f in fit.samples],
        max_tokens=listed(fit.max_tokens),
        fit_steps=fit.steps,
        fit_lr=fit.lr,
        seed=fit.seed,
        strip=cfg.strip,
        use_ema=cfg.use_ema,
        allow_pickle=cfg.allow_pickle,
        device=cfg.device,
        write_report=cfg.report,
        progress=cfg.progress,
        overwrite=cfg.overwrite,
    )
    print(report.markdown())


if __name__ == "__main__":
    main("convert_checkpoint", task, doc=__doc__)
