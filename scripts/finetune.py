"""Fine-tune the factor networks of a converted checkpoint (configs/finetune/; see
pairformer_fb/tools/finetune.py).

    python scripts/finetune.py checkpoint=IN_fb.pt output_dir=DIR [model=tiny|base|v2] \
        [trainer.max_steps=N] [data.crop_size=T] [loss=bias_and_output] [resume=DIR/checkpoints/step_N.pt]
    torchrun --nproc_per_node=K scripts/finetune.py ...        (DDP: nccl on CUDA, gloo on CPU)

Exits non-zero, with the reason on stderr, on bad input.
"""

import os
import sys

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from pairformer_fb.tools.checkpoint import CheckpointError
from pairformer_fb.tools.finetune import finetune
from pairformer_fb.tools.presets import PresetError


@hydra.main(config_path="../configs/finetune", config_name="finetune", version_base=None)
def main(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("checkpoint", "output_dir", "resume"):
        if c.get(key):
            c[key] = to_absolute_path(c[key])
    try:
        summary = finetune(c)
    except (CheckpointError, PresetError, ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {summary['output']} after {summary['steps']} steps "
              f"({summary['steps_per_second'] or 0:.3f} steps/s)")


if __name__ == "__main__":
    main()
