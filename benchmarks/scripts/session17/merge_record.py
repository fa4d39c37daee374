"""Issue 17's record in one file: the two halves of `session12/call4.sh` (`ours`: floor, dense
bias, factors; `flex`: floor, FlexAttention, each half in its own process) merged into the
format of `benchmarks/attention_h200/results.json` (`environment`, `records`). The floor is the
`ours` half's; FlexAttention's records are added after each shape's, and the `flex` half's own
floor is kept in its folder only.

    python benchmarks/scripts/session17/merge_record.py OURS_DIR FLEX_DIR OUT_DIR [--overwrite]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from pairformer_fb.bench.attention import Record, markdown_table  # noqa: E402
from pairformer_fb.cli import atomic_write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", type=Path)
    ap.add_argument("flex", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--overwrite", action="store_true", help="replace OUT/results.json if it exists")
    a = ap.parse_args()
    if (a.out / "results.json").exists() and not a.overwrite:
        sys.exit(f"out: {a.out / 'results.json'} exists; pass --overwrite to replace it")
    halves = {}
    for name, folder in (("ours", a.ours), ("flex", a.flex)):
        try:
            halves[name] = json.loads((folder / "results.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"{name}: {folder / 'results.json'} is not a readable benchmark record ({e})")
        if not isinstance(halves[name], dict) or not {"environment", "records"} <= halves[name].keys():
            sys.exit(f"{name}: {folder / 'results.json'} has no environment and records (not bench_attention's)")
    ours, flex = halves["ours"], halves["flex"]
    if ours["environment"]["device"] != flex["environment"]["device"]:
        sys.exit(f"flex: ran on {flex['environment']['device']}, ours on {ours['environment']['device']}")
    # each shape's records in the ours half's order, that shape's FlexAttention records after them
    by_shape: dict[tuple, list] = {}
    for r in ours["records"]:
        by_shape.setdefault((r["kind"], r["n"]), []).append(r)
    for r in flex["records"]:
        if r["method"] != "sdpa_floor":
            by_shape.setdefault((r["kind"], r["n"]), []).append(r)
    records = [r for rs in by_shape.values() for r in rs]
    env = dict(ours["environment"])
    env["command"] = f"{env['command']} + {flex['environment']['command']} (merged)"
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out / "results.json", json.dumps({"environment": env, "records": records}, indent=1))
    atomic_write(a.out / "results.md", markdown_table([Record(**r) for r in records], env))
    print(f"{len(records)} records -> {a.out}")


if __name__ == "__main__":
    main()
