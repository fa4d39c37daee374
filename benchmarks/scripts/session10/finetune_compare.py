"""Compare fine-tuning runs (their output_dir: train_log.csv, finetune_report.json) for issue 17:
steps/s (the report's, else from the log) against session 4's recorded 0.61, seconds per step
fitted as a + b * n_cycle (steps after the first, which compiles), and each run's loss curve
against the first run's on the steps both logged. Prints markdown.

    python benchmarks/scripts/session10/finetune_compare.py RUN_DIR [RUN_DIR ...]
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

RECORDED_STEPS_PER_S = 0.61  # benchmarks/session4/call5/ft/run/finetune_report.md (H200, 110 steps)


def load(run: Path) -> dict:
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    report = run / "finetune_report.json"
    summary = json.loads(report.read_text()) if report.is_file() else {}
    seconds = np.array([float(r["seconds"]) for r in rows])
    step_s = np.diff(np.concatenate([[0.0], seconds]))
    cycles = np.array([int(r["n_cycle"]) for r in rows])
    fit = np.linalg.lstsq(np.stack([np.ones(len(rows) - 1), cycles[1:]], 1), step_s[1:], rcond=None)[0]
    return {
        "name": run.name,
        "steps": len(rows),
        "steps_per_s": summary.get("steps_per_second") or len(rows) / seconds[-1],
        "complete": bool(summary),
        "fit": fit,
        "median_step_s": float(np.median(step_s[1:])),
        "loss": {int(r["step"]): float(r["loss"]) for r in rows},
        "graphs": summary.get("cuda_graphs"),
    }


def main(dirs: list[str]) -> None:
    missing = [d for d in dirs if not (Path(d) / "train_log.csv").is_file()]
    for d in missing:
        print(f"- {d}: no train_log.csv (the run did not start or logged no step)")
    runs = [load(Path(d)) for d in dirs if d not in missing]
    if not runs:
        return
    print(
        "| run | steps | steps/s | × session 4's 0.61 | s per step = a + b · n_cycle | median s per step | CUDA graphs |"
    )
    print("|---|---:|---:|---:|---|---:|---|")
    for r in runs:
        a, b = r["fit"]
        g = r["graphs"]
        graphs = f"{g['captures']} captures, {g['replays']} replays, {g['failed']} failed" if g else "—"
        done = "" if r["complete"] else " (cut short: from the log)"
        print(
            f"| {r['name']} | {r['steps']}{done} | {r['steps_per_s']:.3f} | {r['steps_per_s'] / RECORDED_STEPS_PER_S:.2f} "
            f"| {a:.3f} + {b:.3f} · n | {r['median_step_s']:.3f} | {graphs} |"
        )
    base = runs[0]
    for r in runs[1:]:
        common = sorted(set(base["loss"]) & set(r["loss"]))
        if common:
            rel = max(abs(r["loss"][s] - base["loss"][s]) / abs(base["loss"][s]) for s in common)
            print(
                f"\n{r['name']} vs {base['name']}: largest relative loss difference {rel:.2e} over {len(common)} steps"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
