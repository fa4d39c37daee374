"""Fuzz the FlashBias op against its float64 oracle and record the run (configs/fuzz_op.yaml).

python scripts/fuzz_op.py                                   # small CPU run (reference path)
python scripts/fuzz_op.py cases=320 named=true device=cuda workers=12 output_dir=benchmarks/fuzz_h200
"""

import os

import torch
from omegaconf import OmegaConf

from pairformer_fb.bench import fuzz
from pairformer_fb.bench.timing import environment
from pairformer_fb.cli import UsageError, main


def task(cfg) -> None:
    for key in ("cases", "workers", "max_elements"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UsageError(f"{key}={cfg[key]!r}: expected an integer >= 1")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise UsageError(f"seed={cfg.seed!r}: expected an integer >= 0")
    for key in ("named", "cold_cache"):
        if not isinstance(cfg[key], bool):
            raise UsageError(f"{key}={cfg[key]!r}: expected true or false")
    if not isinstance(cfg.timeout_s, (int, float)) or isinstance(cfg.timeout_s, bool) or cfg.timeout_s <= 0:
        raise UsageError(f"timeout_s={cfg.timeout_s!r}: expected a number of seconds > 0")
    if cfg.backend not in ("auto", "triton", "reference"):
        raise UsageError(f"backend={cfg.backend!r}: expected auto, triton or reference")
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"device={cfg.device!r}: expected auto, cuda or cpu")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda: no CUDA device is available")
    if cfg.backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError(
            "backend=triton on the CPU needs Triton's interpreter: set TRITON_INTERPRET=1, or use backend=auto"
        )
    max_len = cfg.max_len if cfg.max_len != "auto" else (600 if device == "cuda" else 40)
    if not isinstance(max_len, int) or max_len < 1:
        raise UsageError(f"max_len={cfg.max_len!r}: expected auto or an integer >= 1")
    cases = fuzz.draw_cases(cfg.cases, cfg.seed, max_len=max_len, max_elements=cfg.max_elements)
    if cfg.named:
        cases = fuzz.named_cases(cfg.seed) + cases
    records = fuzz.run_fuzz(
        cases, device, workers=cfg.workers, backend=cfg.backend, cold_cache=cfg.cold_cache, timeout_s=cfg.timeout_s
    )
    summary = fuzz.write_results(
        records, cfg.output_dir, environment(torch.device(device)), OmegaConf.to_container(cfg, resolve=True)
    )
    print(open(f"{cfg.output_dir}/results.md").read())
    if summary["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main("fuzz_op", task, doc=__doc__)
