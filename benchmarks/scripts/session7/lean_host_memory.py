"""What ``patch_model``'s ``lean_memory`` saves on Protenix (hosts/protenix/lean.py), measured on
the CPU machine (no GPU was lent in session 7) as the process's peak resident memory (Linux
VmHWM, reset when the measured method starts) minus its resident memory at that start.

1. The confidence head, with its own loop over the diffusion samples and one sample per call.
   On a CPU its outputs stay in host memory at every length, as they do on CUDA beyond 2,000
   tokens (where Protenix moves them there): pae and pde logits, [samples, N, N, 64] fp32 each.
   Per token count: one prediction of the tiny Protenix (random weights; the logits' shapes do
   not depend on the width) with its confidence head's Pairformer blocks removed (on a CPU their
   torch triangle attention holds [N, H, N, N] logits, which would hide the outputs; on CUDA it
   is a fused kernel), unpatched, patched with lean_memory=False and patched (the default). In
   units of one sample's logits (N^2 x 64 x 4 bytes), expected from the code: 3 x samples for
   the host's loop (stacked pae, pde list, stacked pde), 2 x samples + 2 for one sample per
   call, plus the head's working set. The two patched runs' outputs are compared bit for bit.
2. The diffusion's pair conditioning (``DiffusionConditioning.prepare_cache``) of the base
   architecture (c_z = 128, random weights) on random z and relative-position features, at
   lengths where the concatenation passes 1 GiB (where lean_memory splits it into rows): the
   host's at once against the lean one, outputs compared bit for bit.

    python benchmarks/scripts/session7/lean_host_memory.py OUT_DIR [--head TOKENS ...] [--conditioning TOKENS ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")
# glibc: every block of 64 KiB or more its own mapping, returned when freed (no dynamic
# threshold), so that resident memory follows what is alive; set before the process starts
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import pairformer_fb as fb  # noqa: E402
from pairformer_fb.bench.ladder import long_sample  # noqa: E402
from pairformer_fb.bench.structure import seed_all  # noqa: E402
from pairformer_fb.bench.timing import environment, host_peak_bytes, host_peak_reset, host_resident_bytes  # noqa: E402
from pairformer_fb.cli import atomic_write  # noqa: E402
from pairformer_fb.data.featurize import read_samples  # noqa: E402
from pairformer_fb.hosts.presets import randomise_  # noqa: E402
from pairformer_fb.hosts.protenix.featurize import protenix_features  # noqa: E402
from pairformer_fb.hosts.protenix.lean import lean_methods  # noqa: E402
from pairformer_fb.hosts.protenix.presets import build_protenix  # noqa: E402

SAMPLES, GIB = 5, 2**30
HEAD_VARIANTS = {"original (host loop)": None, "patched, lean_memory=False": False, "patched (lean_memory)": True}


class Growth:
    """Host memory growth over a call: resident at its start, peak until its end."""

    def start(self, *_, **__):
        self.start_bytes = host_resident_bytes()
        host_peak_reset()

    def end(self, *_, **__):
        self.peak_bytes = host_peak_bytes()

    @property
    def gib(self) -> float:
        return (self.peak_bytes - self.start_bytes) / GIB


def head_records(tokens: list[int]) -> list[dict]:
    overrides = {"sample_diffusion.N_sample": SAMPLES, "sample_diffusion.N_step": 2, "model.confidence_head.n_blocks": 0}
    model, _ = build_protenix("tiny", overrides, cpu=True)
    model = randomise_(model, seed=0).eval()
    growth = Growth()
    hooks = [
        model.confidence_head.register_forward_pre_hook(growth.start),
        model.confidence_head.register_forward_hook(growth.end),
    ]
    records = []
    for n in tokens:
        feats, _ = protenix_features(long_sample(read_samples(["7wux_a2b2"]), n))
        unit = n * n * 64 * 4  # one sample's pae (or pde) logits, fp32
        outputs = {}
        for label, lean in HEAD_VARIANTS.items():
            if lean is not None:
                fb.patch_model(model, lean_memory=lean)
            seed_all(0)
            t0 = time.perf_counter()
            with torch.no_grad():
                pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
            seconds = time.perf_counter() - t0
            if lean is not None:
                fb.unpatch_model(model)
            outputs[label] = [pred[k] for k in ("plddt", "pae", "pde", "resolved")]
            del pred
            records.append(
                {
                    "what": "confidence head",
                    "tokens": n,
                    "variant": label,
                    "samples": SAMPLES,
                    "start_gib": growth.start_bytes / GIB,
                    "growth_gib": growth.gib,
                    "unit_gib": unit / GIB,
                    "growth_units": growth.gib * GIB / unit,
                    "expected_units": {None: 3 * SAMPLES, False: 3 * SAMPLES, True: 2 * SAMPLES + 2}[lean],
                    "seconds_prediction": seconds,
                }
            )
            print(json.dumps(records[-1]), flush=True)
        a, b = outputs["patched, lean_memory=False"], outputs["patched (lean_memory)"]
        same = all(torch.equal(x, y) for x, y in zip(a, b))
        for r in records[-len(HEAD_VARIANTS) :]:
            r["lean_outputs_bit_identical"] = same
    for h in hooks:
        h.remove()
    return records


def conditioning_records(tokens: list[int]) -> list[dict]:
    model, _ = build_protenix("base", {}, cpu=True)
    conditioning = randomise_(model.diffusion_module.diffusion_conditioning, seed=0).eval()
    del model
    lean = lean_methods(conditioning)["prepare_cache"]
    growth, records = Growth(), []
    for n in tokens:
        g = torch.Generator().manual_seed(n)
        z = torch.randn(n, n, conditioning.c_z, generator=g)
        relp = (torch.rand(n, n, 139, generator=g) < 0.05).float()
        outs = {}
        for label, fn in (("host (at once)", conditioning.prepare_cache), ("lean (rows)", lean)):
            with torch.no_grad():
                growth.start()
                t0 = time.perf_counter()
                outs[label] = fn(relp, z, False)
                seconds = time.perf_counter() - t0
                growth.end()
            records.append(
                {
                    "what": "diffusion pair conditioning (prepare_cache), base width",
                    "tokens": n,
                    "variant": label,
                    "start_gib": growth.start_bytes / GIB,
                    "growth_gib": growth.gib,
                    "output_gib": outs[label].numel() * 4 / GIB,
                    "concatenation_gib": n * n * 2 * conditioning.c_z * 4 / GIB,
                    "seconds": seconds,
                }
            )
            print(json.dumps(records[-1]), flush=True)
        same = torch.equal(*outs.values())
        for r in records[-2:]:
            r["lean_outputs_bit_identical"] = same
        del outs, z, relp
    return records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--head", type=int, nargs="*", default=[512, 768])
    ap.add_argument("--conditioning", type=int, nargs="*", default=[1152, 1536])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    env = environment(torch.device("cpu")) | {
        "commit": commit.strip(),
        "threads": torch.get_num_threads(),
        "MALLOC_MMAP_THRESHOLD_": os.environ["MALLOC_MMAP_THRESHOLD_"],
    }
    records = conditioning_records(args.conditioning) + head_records(args.head)
    result = {
        "environment": env,
        "measure": "process resident memory growth (Linux VmHWM reset at the method's start, minus VmRSS then)",
        "head_model": "tiny Protenix (random weights), confidence head without Pairformer blocks, 5 samples, "
        "2 diffusion steps, 1 cycle; inputs: the 7WUX A2B2 chains repeated",
        "records": records,
    }
    atomic_write(args.out / "results.json", json.dumps(result, indent=1))
    lines = [
        "# Protenix host methods under lean_memory: host memory, on the CPU",
        "",
        f"{env['date']} · {env['device']} (CPU machine, no GPU lent) · torch {env['torch']} · commit {env['commit']} "
        f"· command: `{env['command']}`",
        "",
        f"Measure: {result['measure']}; glibc's MALLOC_MMAP_THRESHOLD_=65536 (freed blocks go back to the "
        "system, so resident memory follows what is alive). Random weights (the memory does not depend on them).",
        "",
        "## Diffusion pair conditioning (`DiffusionConditioning.prepare_cache`, c_z = 128)",
        "",
        "| tokens | variant | concatenation GiB | output GiB | growth GiB | seconds | bit-identical |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in (r for r in records if r["what"].startswith("diffusion")):
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['concatenation_gib']:.2f} | {r['output_gib']:.2f} | "
            f"{r['growth_gib']:.2f} | {r['seconds']:.1f} | {r['lean_outputs_bit_identical']} |"
        )
    lines += [
        "",
        "## Confidence head (pae / pde logits of 5 samples)",
        "",
        f"{result['head_model']}. Unit: one sample's pae (or pde) logits, N^2 x 64 x 4 bytes; expected from the "
        "code: 15 units for the host's loop, 12 for one sample per call, plus the head's working set.",
        "",
        "| tokens | variant | unit GiB | growth GiB | growth in units | expected units | prediction seconds | "
        "bit-identical (patched) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in (r for r in records if r["what"] == "confidence head"):
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['unit_gib']:.3f} | {r['growth_gib']:.2f} | {r['growth_units']:.1f} | "
            f"{r['expected_units']} | {r['seconds_prediction']:.1f} | {r['lean_outputs_bit_identical']} |"
        )
    atomic_write(args.out / "results.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
