"""ATen ops dispatched per module of one exact-mode trunk cycle of patched Protenix (base
architecture, random weights, a 32-token crop of 7WUX A, no gradients), by the block-level module
that dispatched them, as a proxy for kernel launches in a launch-bound fine-tuning step (issue 17).
On a CPU our attention op runs its torch reference and layer norms their torch path (many ops),
and Protenix its torch triangle multiplication; on a GPU those are a few Triton / cuEquivariance
launches each, so the counts of those modules overstate their GPU launches.

    python benchmarks/scripts/session9/trunk_op_counts.py > benchmarks/session9/finetune_cycles_cpu/trunk_op_counts.txt
"""

import collections
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import pairformer_fb as fb  # noqa: E402
from pairformer_fb.convert.convert import build_model  # noqa: E402
from pairformer_fb.convert.training_data import ProteinCrops, split_samples  # noqa: E402
from pairformer_fb.hosts.presets import randomise_  # noqa: E402
from pairformer_fb.hosts.protenix.training import protenix_trunk  # noqa: E402


def main() -> None:
    model, preset = build_model("protenix", "base")
    model = randomise_(model, seed=0).eval()
    fb.patch_model(model, mode="exact")
    feats = ProteinCrops(split_samples(["7wux_a"], None, 0)[0], crop_size=32, seed=0).fixed(0)
    stack: list[str] = []
    counts: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[stack[-1] if stack else "(outside the blocks)"] += 1
            return func(*args, **(kwargs or {}))

    def enter(key):
        def hook(module, args):
            stack.append(key)
            calls[key] += 1

        return hook

    for name, m in model.named_modules():
        parts = name.split(".")
        if "blocks" in parts and len(parts) == parts.index("blocks") + 3:  # a block's child module
            key = re.sub(r"\.\d+\.", ".*.", name)
            m.register_forward_pre_hook(enter(key))
            m.register_forward_hook(lambda module, args, output: stack.pop() and None)
    with torch.no_grad(), Count():
        protenix_trunk(model, feats, 1, grad=False)
    print(f"Protenix {preset}, patched exact, one trunk cycle, 32 tokens, torch {torch.__version__} (CPU)")
    print(f"total ATen ops: {sum(counts.values())}")
    print(f"{'ops':>7} {'calls':>6} {'per call':>8}  module")
    for key, n in counts.most_common():
        c = calls.get(key, 0)
        print(f"{n:7d} {c:6d} {n / c if c else float('nan'):8.1f}  {key}")


if __name__ == "__main__":
    main()
