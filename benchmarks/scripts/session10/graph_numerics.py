"""Does replaying the recycling cycles from CUDA graphs change fine-tuning's numbers? (issue 17)
Protenix base, random weights, lowrank R = 32 factor networks (untrained), bf16 autocast, the
validation of finetune.py (distill pass + lowrank pass) on one crop, run eagerly twice, then
with graph_recycling twice (the second replays), then eagerly again: per run the mean per-block
error and the trunk deviations. Eager against eager says what run-to-run noise is.

    python benchmarks/scripts/session10/graph_numerics.py [tokens=76] [n_cycle=4]
"""

import json
import sys
import time

import torch

sys.path.insert(0, ".")
import pairformer_fb as fb  # noqa: E402
from pairformer_fb.convert.finetune import DistillLoss, graph_recycling, validate  # noqa: E402
from pairformer_fb.convert.training_data import ProteinCrops, split_samples  # noqa: E402
from pairformer_fb.hosts.presets import randomise_  # noqa: E402
from pairformer_fb.hosts.protenix.presets import build_protenix  # noqa: E402
from pairformer_fb.patching.patching import patched_modules  # noqa: E402

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if (
    len(args) != len(sys.argv) - 1
    or set(args) - {"tokens", "n_cycle"}
    or not all(v.isdigit() and int(v) > 0 for v in args.values())
):
    raise SystemExit(f"graph_numerics: error: arguments are tokens=N n_cycle=N (positive integers), got {sys.argv[1:]}")
tokens, n_cycle = int(args.get("tokens", 76)), int(args.get("n_cycle", 4))
t0 = time.time()
model = randomise_(build_protenix("base", cpu=False)[0], seed=0).cuda().eval()
fb.patch_model(model, mode="lowrank", rank=32)
objective = DistillLoss(model, list(patched_modules(model)))
feats = ProteinCrops(split_samples(["1ubq"], None, 0)[0], crop_size=tokens, seed=0).fixed(0)
batches = [("1ubq", {k: v.cuda() for k, v in feats.items()})]
autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731


def one(tag):
    v = validate(objective, batches, n_cycle, autocast)
    row = {"run": tag, **{k: v[k] for k in ("mean_block_error", "pair_deviation", "single_deviation")}}
    print(json.dumps(row), flush=True)
    return row


rows = [one("eager 1"), one("eager 2")]
handle = graph_recycling(model, [p for n, p in model.named_parameters() if ".factor_network." in n])
rows += [one("graphed 1 (learn, capture)"), one("graphed 2 (replays)")]
print("graph stats", handle.stats, flush=True)
handle.remove()
rows.append(one("eager 3"))
print(f"{time.time() - t0:.0f} s")
