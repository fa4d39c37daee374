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

from pairformer_fb.bench.attention import markdown_table  # noqa: E402
from pairformer_fb.bench.attention import Record  # noqa: E402
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
    ours = json.loads((a.ours / "results.json").read_text())
    flex = json.loads((a.flex / "results.json").read_text())
    if ours["environment"]["device"] != flex["environment"]["device"]:
        sys.exit(f"flex: ran on {flex['environment']['device']}, ours on {ours['environment']['device']}")
    extra = {}
    for r in flex["records"]:
        if r["method"] != "sdpa_floor":
            extra.setdefault((r["kind"], r["n"]), []).append(r)
    records = []
    for r in ours["records"]:
        records.append(r)
        last_of_shape = r is [x for x in ours["records"] if (x["kind"], x["n"]) == (r["kind"], r["n"])][-1]
        if last_of_shape:
            records += extra.pop((r["kind"], r["n"]), [])
    records += [r for rs in extra.values() for r in rs]
    env = dict(ours["environment"])
    env["command"] = f"{env['command']} + {flex['environment']['command']} (merged)"
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out / "results.json", json.dumps({"environment": env, "records": records}, indent=1))
    atomic_write(a.out / "results.md", markdown_table([Record(**r) for r in records], env))
    print(f"{len(records)} records -> {a.out}")


if __name__ == "__main__":
    main()
