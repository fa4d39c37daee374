"""Fine-tuning step time with the factor networks run in every recycling cycle (before) or in
the last only (``DistillLoss.distill_in_last_cycle``, session 9), on whatever device is there.
Protenix (random weights, lowrank R = 32 factor networks, untrained), one crop of 7WUX A,
``n_cycle`` recycles, forward + backward of the distillation loss; the loss and gradients of the
two are checked equal. (Since session 10 the last cycle's losses are computed after the trunk,
batched, so "before" no longer runs the factor networks in the earlier cycles: the session-9
record, benchmarks/session9/finetune_cycles_cpu/, was taken before that.)

    python benchmarks/scripts/session9/finetune_cycles.py --preset base --crop 48 --cycles 4 --out X.json
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402

import pairformer_fb as fb  # noqa: E402
from pairformer_fb.cli import atomic_write  # noqa: E402
from pairformer_fb.convert.checkpoint import FACTOR_KEY_MARK  # noqa: E402
from pairformer_fb.convert.convert import build_model  # noqa: E402
from pairformer_fb.convert.finetune import DistillLoss  # noqa: E402
from pairformer_fb.convert.training_data import ProteinCrops, split_samples  # noqa: E402
from pairformer_fb.hosts.presets import randomise_  # noqa: E402
from pairformer_fb.patching.patching import patched_modules  # noqa: E402


class _OpCounter:
    """ATen ops dispatched in a step (each about one kernel launch on a GPU), outside our attention
    op, and the op's calls: on a CPU the op runs its torch reference (many ops), on a GPU 1-3
    Triton launches per call, so its calls are counted apart."""

    def __init__(self):
        self.counts = {"aten_ops_outside_the_attention_op": 0, "attention_op_calls": 0}
        self._inside = 0

    @contextlib.contextmanager
    def counting(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        from pairformer_fb.kernel import op

        counter = self
        self.counts = dict.fromkeys(self.counts, 0)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not counter._inside:
                    counter.counts["aten_ops_outside_the_attention_op"] += 1
                return func(*args, **(kwargs or {}))

        reference = op.attention_reference

        def counted_reference(*a, **kw):
            if not counter._inside:  # (session 10's finetune_graph_ops.py: not inside uncounted replays)
                counter.counts["attention_op_calls"] += 1
            counter._inside += 1
            try:
                return reference(*a, **kw)
            finally:
                counter._inside -= 1

        op.attention_reference = counted_reference
        try:
            with Mode():
                yield
        finally:
            op.attention_reference = reference


def distill_setup(preset: str, crop: int, device: torch.device):
    """(model, preset, DistillLoss, features, factor parameters): Protenix with random weights and
    untrained lowrank R = 32 factor networks, one ``crop``-token crop of 7WUX A on ``device``."""
    model, preset = build_model("protenix", preset)
    model = randomise_(model, seed=0).to(device).eval()
    fb.patch_model(model, mode="lowrank", rank=32)
    objective = DistillLoss(model, list(patched_modules(model)))
    feats = ProteinCrops(split_samples(["7wux_a"], None, 0)[0], crop_size=crop, seed=0).fixed(0)
    feats = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in feats.items()}
    params = [q for n, q in model.named_parameters() if FACTOR_KEY_MARK in n and q.requires_grad]
    return model, preset, objective, feats, params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"finetune_cycles: error: --out {out} exists")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, preset, objective, feats, params = distill_setup(args.preset, args.crop, device)

    def step():
        loss, _ = objective(feats, args.cycles)
        grads = torch.autograd.grad(loss, params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.detach(), grads

    every_cycle = lambda n_cycle: lambda cycle: objective.set_mode("distill")  # noqa: E731  (before)
    counter = _OpCounter()
    results = {}
    ref = None
    for name, patch in (("before: every cycle", every_cycle), ("after: last cycle", None)):
        ctx = contextlib.ExitStack()
        if patch is not None:
            original = objective.distill_in_last_cycle
            objective.distill_in_last_cycle = patch
            ctx.callback(setattr, objective, "distill_in_last_cycle", original)
        with ctx:
            with counter.counting():
                step()
            ops = dict(counter.counts)
            got = step()  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        if ref is None:
            ref = got
        same = bool(torch.equal(got[0], ref[0]) and all(torch.equal(a, b) for a, b in zip(got[1], ref[1])))
        results[name] = {
            "seconds": sorted(times)[len(times) // 2],
            "all": times,
            "loss_and_grads_equal": same,
            "aten_ops_per_step": ops,
        }
        print(
            f"{name:22s} {results[name]['seconds']:.3f} s per step (median of {args.repeats}), equal: {same}, ops {ops}"
        )
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "preset": preset,
        "crop": args.crop,
        "n_cycle": args.cycles,
        "weights": "random; factor networks untrained (lowrank R = 32)",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps({"environment": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
