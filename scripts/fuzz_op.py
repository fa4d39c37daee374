"""Fuzz the FlashBias op against its float64 oracle and record the run (configs/fuzz_op.yaml).

    python scripts/fuzz_op.py                                   # small CPU run (reference path)
    python scripts/fuzz_op.py cases=320 device=cuda workers=8 output_dir=benchmarks/fuzz_h200
"""

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pairformer_fb.tools import fuzz
from pairformer_fb.tools.timing import environment


@hydra.main(config_path="../configs", config_name="fuzz_op", version_base=None)
def main(cfg: DictConfig) -> None:
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    max_len = cfg.max_len if device == "cuda" or "max_len=" in " ".join(__import__("sys").argv) else 40
    cases = fuzz.draw_cases(cfg.cases, cfg.seed, max_len=max_len, max_elements=cfg.max_elements)
    if cfg.named:
        cases = fuzz.named_cases(cfg.seed) + cases
    records = fuzz.run_fuzz(cases, device, workers=cfg.workers, backend=cfg.backend, cold_cache=cfg.cold_cache,
                            timeout_s=cfg.timeout_s)
    summary = fuzz.write_results(records, cfg.output_dir, environment(torch.device(device)),
                                 OmegaConf.to_container(cfg, resolve=True))
    print(open(f"{cfg.output_dir}/results.md").read())
    if summary["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
