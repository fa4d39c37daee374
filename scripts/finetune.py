r"""Fine-tune the factor networks of a converted checkpoint (configs/finetune/; see
pairformer_fb/convert/finetune.py).

    python scripts/finetune.py checkpoint=IN_fb.pt output_dir=DIR [model=tiny|base|v2] \
        [trainer.max_steps=N] [data.crop_size=T] [loss=bias_and_output] [resume=DIR/checkpoints/step_N.pt]
    torchrun --nproc_per_node=K scripts/finetune.py ...        (DDP: nccl on CUDA, gloo on CPU)

An existing output checkpoint is replaced only with overwrite=true, or by the run that wrote it
continued with resume=. Bad input: one line "finetune: error: ..." on stderr, exit status 2,
checked before any model work.
"""

import os

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from hydra.utils import to_absolute_path  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pairformer_fb.cli import CONFIGS, main  # noqa: E402


def task(cfg) -> None:
    from pairformer_fb.convert.finetune import finetune

    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("checkpoint", "output_dir", "resume"):
        if c.get(key):
            c[key] = to_absolute_path(c[key])
    summary = finetune(c)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"wrote {summary['output']} after {summary['steps']} steps ({summary['steps_per_second'] or 0:.3f} steps/s)"
        )


if __name__ == "__main__":
    main("finetune", task, doc=__doc__, config_dir=CONFIGS / "finetune")
