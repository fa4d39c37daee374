"""The conversion's factors at token counts they were and were not fitted at (tiny Protenix,
random weights, CPU): convert with ``max_tokens`` = [64] / [32, 64] / [32, 64, 128], then measure
every factor network's bias-approximation error (``factor_init.approximation_error``, the
conversion's and fine-tuning's definition; the mean over the modules) on the fitted chains and on
the held-out chain (7wux_b, every cut of it held out), each cut to 32 ... 128 tokens and run with
another seed than the fit's (Protenix's sample features and inference dropout draw from it). Why: fine-tuning's step-0 validation at 32-token crops read 0.10 against
the conversion's 0.02 at 64 (session 15); the factor networks' inputs are row / column averages of
the pair representation, which move with the token count.

    python benchmarks/scripts/session15/conversion_lengths.py --out DIR
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")
ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_convert import protenix_model, save_protenix  # noqa: E402

from pairformer_fb.bench.timing import environment  # noqa: E402
from pairformer_fb.cli import atomic_write  # noqa: E402
from pairformer_fb.convert.convert import DEFAULT_SAMPLES_DIR, build_model, convert_checkpoint, load_converted  # noqa: E402
from pairformer_fb.convert.factor_init import approximation_error, capture_bias_targets  # noqa: E402
from pairformer_fb.convert.samples import read_fasta_sequences, run_samples  # noqa: E402
from pairformer_fb.patching.patching import patched_modules  # noqa: E402

FIT = [DEFAULT_SAMPLES_DIR / f for f in ("1crn.fasta", "1ubq.fasta", "7wux_a.fasta", "7wux_b.fasta")]
SETTINGS = ([64], [32, 64], [32, 64, 128])
EVAL_LENGTHS = (32, 48, 64, 96, 128)


def mean_error(model, files, length) -> float:
    nets = {p: w.flash_bias.factor_network for p, w in patched_modules(model).items() if w.flash_bias.factor_network}
    seqs = read_fasta_sequences(files, length)
    rec = capture_bias_targets(model, lambda m: run_samples(m, "protenix", seqs, seed=1, progress=False))
    with torch.no_grad():
        return float(np.mean([float(approximation_error(nets[p], r)) for p, r in rec.items()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    if out.exists():
        raise SystemExit(f"conversion_lengths: error: --out {out} exists")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tiny.pt"
        save_protenix(protenix_model(), src)
        for lengths in SETTINGS:
            dst = Path(tmp) / f"fb_{'_'.join(map(str, lengths))}.pt"
            start = time.perf_counter()
            report = convert_checkpoint(
                src, dst, model="tiny", samples=FIT, max_tokens=lengths, progress=False, device="cpu"
            )
            seconds = time.perf_counter() - start
            model, _ = build_model("protenix", "tiny")
            load_converted(dst, model)
            model.eval()
            row = {
                "max_tokens": lengths,
                "convert_s": round(seconds, 1),
                "samples": report.samples,
                "report_final_mean": float(np.mean([f.error for f in report.fits])),
                "report_heldout_mean": float(np.mean([f.heldout_error for f in report.fits])),
                "fitted_chains": {n: mean_error(model, FIT[:3], n) for n in EVAL_LENGTHS},
                "heldout_chain": {n: mean_error(model, FIT[3:], n) for n in EVAL_LENGTHS},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    env = {
        **environment(torch.device("cpu")),
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": "Protenix tiny preset, random weights (tests/test_convert.protenix_model), default factor config",
        "held_out": "7wux_b (the last chain: every cut of it held out of the fit)",
    }
    out.mkdir(parents=True)
    atomic_write(out / "results.json", json.dumps({"environment": env, "records": rows}, indent=1))
    lines = [
        "| max_tokens | convert s | cuts run (fitted + held out) | "
        + " | ".join(f"fitted / held out @ {n}" for n in EVAL_LENGTHS)
        + " |",
        "|---|---|---|" + "---|" * len(EVAL_LENGTHS),
    ]
    for r in rows:
        cells = " | ".join(f"{r['fitted_chains'][n]:.3f} / {r['heldout_chain'][n]:.3f}" for n in EVAL_LENGTHS)
        lines.append(f"| {r['max_tokens']} | {r['convert_s']} | {len(r['samples'])} | {cells} |")
    atomic_write(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
