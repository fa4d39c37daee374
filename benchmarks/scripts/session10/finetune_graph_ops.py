"""ATen ops dispatched per fine-tuning step with ``trainer.cuda_graphs`` (issue 17), measurable on
a CPU: ``graph_recycling`` with a backend that has graph semantics (``EagerReplayBackend``) and
whose replays are not counted, since on a GPU a replay is one graph launch instead of the ops it
replays. Same setting as session 9's ``finetune_cycles.py`` (Protenix, random weights, untrained
lowrank R = 32 factor networks, one crop of 7WUX A, ``n_cycle`` recycles, forward + backward of the
distillation loss): the step eager (main without graphs) against the step once the graph of the
cycles without gradients is captured; loss and gradients checked equal.

    python benchmarks/scripts/session10/finetune_graph_ops.py --preset base --crop 64 --cycles 4 --out X.json
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "session9"))

import torch  # noqa: E402
from finetune_cycles import _OpCounter, distill_setup  # noqa: E402

from pairformer_fb.cli import atomic_write  # noqa: E402
from pairformer_fb.convert.finetune import graph_recycling  # noqa: E402
from pairformer_fb.patching.cuda_graphs import EagerReplayBackend  # noqa: E402


class UncountedReplays(EagerReplayBackend):
    """Graph semantics on a CPU; the ops of a replay are not counted (one graph launch on a GPU)."""

    def __init__(self, counter: _OpCounter):
        super().__init__()
        self.counter = counter

    def capture(self, run, device):
        graph, out = super().capture(run, device)
        replay = graph.replay

        def uncounted():
            self.counter._inside += 1
            try:
                replay()
            finally:
                self.counter._inside -= 1

        graph.replay = uncounted
        return graph, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"finetune_graph_ops: error: --out {out} exists")
    model, preset, objective, feats, params = distill_setup(args.preset, args.crop, torch.device("cpu"))
    counter = _OpCounter()

    def step():
        with counter.counting():
            loss, _ = objective(feats, args.cycles)
            grads = torch.autograd.grad(loss, params)
        return loss.detach(), grads, dict(counter.counts)

    results = {}
    t0 = time.perf_counter()
    eager = step()
    results["eager step (main, trainer.cuda_graphs=false)"] = eager[2]
    handle = graph_recycling(model, params, backend=UncountedReplays(counter))
    first = step()  # learns and captures the cycles without gradients
    results["first step with graphs (learn + capture)"] = first[2]
    steady = step()  # replays them
    results["later steps with graphs (replays)"] = steady[2]
    stats = handle.stats
    handle.remove()
    same = all(
        torch.equal(x[0], eager[0]) and all(torch.equal(a, b) for a, b in zip(x[1], eager[1])) for x in (first, steady)
    )
    for name, ops in results.items():
        print(f"{name:48s} {ops}")
    print(f"graph stats {stats}; loss and gradients equal to the eager step: {same}; {time.perf_counter() - t0:.0f} s")
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "device": f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "preset": preset,
        "crop": args.crop,
        "n_cycle": args.cycles,
        "weights": "random; factor networks untrained (lowrank R = 32)",
        "replays": "EagerReplayBackend (graph semantics), the replayed ops not counted: one graph launch each on a GPU",
    }
    report = {"environment": env, "aten_ops_per_step": results, "graph_stats": stats, "loss_and_grads_equal": same}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
