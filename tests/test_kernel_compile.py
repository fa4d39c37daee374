"""Every branch of the kernels' tile table compiles once for an H100 / H200 (sm_90) and fits its
shared memory, so a first call never recompiles with smaller tiles (each such compile of a
spilling fp32 kernel took 5-150 s, benchmarks/session5/cpu_compile_probe/). Compiled for sm_90 without a GPU (tests/aot_compile.py),
each case in its own process: the largest case of each branch of ``default_config``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from aot_compile import HOPPER_SHARED_MEMORY  # noqa: E402

SCRIPT = Path(__file__).with_name("aot_compile.py")
CASES = {
    # name: spec (see aot_compile.py); widths are padded head dim + padded rank
    "bf16_d32_r64_rows2": dict(D=32, R=64, bias="shared", mask=True),  # two rows per program, widest
    "bf16_d128_bias": dict(D=128, bias="shared", mask=True),  # width 128: one row
    "bf16_d48_bias": dict(D=48, bias="shared", mask=True),  # the diffusion transformer's: one row, 32 x 64
    # its factors, on the same one-row tiles since session 13 (two rows spilled 344-432 B)
    "bf16_d48_r32_factors": dict(B=5, D=48, R=32, mask=True, bwd_no_spills=True),
    "bf16_single_d24_bias": dict(B=1, D=24, bias="shared", mask=True),  # one row: dS stored as the bias gradient
    "bf16_d64_r64": dict(D=64, R=64, bias="shared"),
    "fp16_wide_d128_r128": dict(D=128, R=128, bias="shared", dtype="fp16"),
    "bf16_row_factors_row_bias": dict(D=64, R=64, factor_batch=4, bias="rows"),  # ds_sum kernel
    "tf32_d48_bias": dict(D=48, bias="shared", mask=True, dtype="tf32"),
    "tf32_wide_d128_r128": dict(D=128, R=128, bias="shared", dtype="tf32"),
    "tf32_row_bias_d128": dict(D=128, bias="rows", dtype="tf32"),
    "fp32_d48_bias": dict(D=48, bias="shared", dtype="fp32"),  # full fp32 up to width 64
    # not a default: the forward's four rows per program (issue 17's candidate, swept on the device)
    "bf16_d32_bias_fwd_rows4": dict(B=7, D=32, bias="shared", mask=True, fwd_tiles=[64, 32, 4, 3, 4]),
    "bf16_d32_r32_fwd_rows4": dict(B=7, D=32, R=32, bias="shared", fwd_tiles=[64, 32, 4, 3, 4]),
    # not a default: the backward's four rows per program (issue 17's candidate for the dS sum's volume;
    # every four-row backward tile compiled spills, benchmarks/session14/bwd_rows4_cpu_compile/)
    "bf16_d32_bias_bwd_rows4": dict(B=7, D=32, bias="shared", mask=True, bwd_tiles=[32, 32, 4, 2, 4]),
    # the backward's per-thread atomics (tma_reduce=[]): devices before sm_90, or PFB_TMA_REDUCE=0
    "bf16_d32_bias_atomics": dict(B=7, D=32, bias="shared", mask=True, tma_reduce=[]),
    "bf16_d32_r32_atomics": dict(B=7, D=32, R=32, tma_reduce=[]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_first_call_compiles_each_kernel_once_within_hopper_shared_memory(name, tmp_path):
    c = dict(CASES[name])
    B, H, L = c.pop("B", 4), 2, 100
    no_spills = c.pop("bwd_no_spills", False)
    bias = c.pop("bias", None)
    spec = {
        "B": B,
        "H": H,
        "Lq": L,
        "Lk": L,
        **c,
        "bias_shape": {"shared": [1, H, L, L], "rows": [B, 1, L, L], None: None}[bias],
    }
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # cold: really compile
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parent.parent), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(spec)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    kernels = [json.loads(line) for line in run.stdout.splitlines()]
    names = [k["kernel"] for k in kernels]
    assert names[0] == "_fwd_kernel" and "_bwd_kernel" in names, names
    assert len(names) == len(set(names)), f"a kernel was compiled again with smaller tiles: {kernels}"
    for k in kernels:
        assert k["shared_bytes"] <= HOPPER_SHARED_MEMORY, k
    if "fwd_tiles" in c:
        assert kernels[0]["ROWS"] == c["fwd_tiles"][4] and kernels[0]["stack_bytes"] == 0, kernels[0]  # no spills
    bwd = next(k for k in kernels if k["kernel"] == "_bwd_kernel")
    if no_spills:
        assert bwd["stack_bytes"] == 0 and bwd["ROWS"] == 1, bwd
    if "bwd_tiles" in c:
        assert bwd["ROWS"] == c["bwd_tiles"][4], bwd
    # tiles.TMA_REDUCE's bulk reduce-adds are compiled in (dQ per row, the fused dS sum) unless asked
    # off; dQ's only where its tile rows are at most 64 floats wide (head dim up to 64)
    if c.get("tma_reduce") == []:
        assert bwd["bulk_reduces"] == 0, bwd
    elif c["D"] <= 64:
        assert bwd["bulk_reduces"] > 0, bwd


def test_backward_tile_table_keeps_the_measured_choices(monkeypatch):
    """The 16-bit backward tiles chosen from the session 9 profile (benchmarks/session9/bwd_profile_h100/):
    two stages for the 4-warp two-row triangle tiles, one-row 32 x 64 tiles for head dims 33-64 with
    a dense bias, the 8-warp tiles of a rank above the head dim unchanged (session 5's GPU
    regression cases), the padded dS sum on unless PFB_DS_TILE_PAD=0, and the bulk reduce-adds of
    dQ and dS (on sm_90) unless PFB_TMA_REDUCE says otherwise."""
    from pairformer_fb.kernel import tiles

    monkeypatch.setattr(tiles, "INTERPRET", False)
    bwd = tiles.KernelConfig
    assert tiles.default_config("bwd", 32, 0, True) == bwd(64, 64, 4, 2, 2, fuse_ds=True)  # triangle, dense bias
    assert tiles.default_config("bwd", 32, 32, False) == bwd(64, 64, 4, 2, 2, fuse_ds=True)  # triangle, factors
    assert tiles.default_config("bwd", 64, 0, True) == bwd(32, 64, 4, 3, 1, fuse_ds=True)  # diffusion D = 48
    assert tiles.default_config("bwd", 64, 32, False) == bwd(32, 64, 4, 3, 1, fuse_ds=True)  # its factors
    assert tiles.default_config("bwd", 64, 16, True) == bwd(32, 64, 4, 3, 1, fuse_ds=True)  # bias + factors
    assert tiles.default_config("bwd", 32, 64, False) == bwd(64, 64, 8, 3, 2, fuse_ds=True)  # rank > head dim
    assert tiles.default_config("bwd", 64, 64, True) == bwd(64, 64, 4, 3, 1, fuse_ds=True)  # width 128: one row
    for value, on in ((None, True), ("1", True), ("true", True), ("0", False)):
        assert _tiles_setting("t.DS_TILE_PAD", "PFB_DS_TILE_PAD", value) == str(on), value
    # the bulk reduce-adds (session 11): both kinds unless asked otherwise
    for value, kinds in ((None, ["dq", "ds"]), ("0", []), ("", []), ("dq", ["dq"]), ("ds,dq", ["dq", "ds"])):
        assert _tiles_setting("sorted(t.TMA_REDUCE)", "PFB_TMA_REDUCE", value) == str(kinds), value
    # the sizes that take them (session 14); empty is unset
    for value, scores in ((None, 2**28), ("", 2**28), ("0", 0), ("1000", 1000)):
        assert _tiles_setting("t.TMA_REDUCE_MIN_SCORES", "PFB_TMA_REDUCE_MIN_SCORES", value) == str(scores), value


def _tiles_setting(expr: str, env_name: str, value: str | None) -> str:
    """``expr`` (of the module tiles imported as t) as printed by a fresh interpreter with the
    environment variable env_name set to value (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != env_name}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parent.parent), os.environ.get("PYTHONPATH", "")])
    if value is not None:
        env[env_name] = value
    code = f"import pairformer_fb.kernel.tiles as t; print({expr})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-500:]
    return run.stdout.strip()
