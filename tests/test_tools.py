"""The benchmark tools: their torch baselines compute the same function as the modules, and the
scripts' default (CPU) configurations run end to end and write readable results."""

import json
import os
import sys

import pytest
import torch
from bench_configs import bench_config
from naive import rel_err

from pairformer_fb import FlashBiasAttentionPairBias, FlashBiasTriangleAttention
from pairformer_fb.bench import attention as bench_attention
from pairformer_fb.bench import blocks as bench_blocks
from pairformer_fb.bench import modules as bench_modules


def _random_weights(mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return mod


def test_sdpa_baselines_compute_the_modules_function():
    n = 11
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[:, -2:] = False
    tri = _random_weights(FlashBiasTriangleAttention(16, 2, 8))
    z = torch.randn(1, n, n, 16)
    pair_mask = mask[:, :, None] & mask[:, None, :]
    assert rel_err(bench_modules.sdpa_triangle_starting(tri, z, pair_mask), tri(z, pair_mask)) < 1e-5
    single = _random_weights(FlashBiasAttentionPairBias(32, 16, 4))
    s = torch.randn(1, n, 32)
    assert rel_err(bench_modules.sdpa_single(single, s, z, mask), single(s, z, mask)) < 1e-5


def test_attention_benchmark_runs_on_cpu(tmp_path):
    cfg = bench_config(
        "bench_attention",
        tmp_path,
        ["triangle.sizes=[16]", "single.sizes=[24]", "diffusion.sizes=[20]", "ranks=[4]", "warmup_ms=1", "rep_ms=1"],
    )
    records = bench_attention.run(cfg)
    shapes = {(r.kind, r.n, r.batch, r.heads, r.head_dim) for r in records}
    assert shapes == {("triangle", 16, 16, 4, 32), ("single", 24, 1, 16, 24), ("diffusion", 20, 5, 16, 48)}
    diffusion = {r.method: r for r in records if r.kind == "diffusion"}
    assert diffusion["fb_bias"].status == "ok" and diffusion["sdpa_floor"].status == "ok"
    by_method = {r.method: r for r in records if r.kind == "triangle"}
    assert by_method["fb_bias"].status == "ok" and by_method["fb_bias"].fwd_bwd_ms > 0
    assert by_method["fb_factors"].status == "ok"
    assert by_method["cueq"].status.startswith(("not installed", "skipped", "error"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["environment"]["torch"] == torch.__version__ and len(saved["records"]) == len(records)
    table = (tmp_path / "results.md").read_text()
    assert "| triangle | 16 |" in table and "| diffusion | 20 | 5×16×48 |" in table


@pytest.mark.parametrize(
    "override, needle",
    [
        ("diffusion.sizes=[64,0]", "diffusion.sizes: every entry ([64, 0]) must be a positive integer"),
        ("diffusion.sizes=abc", "diffusion.sizes must be a list, e.g. \"diffusion.sizes=[a,b]\", got 'abc'"),
        ("diffusion.samples=0", "diffusion.samples must be a positive integer, got 0"),
        ("triangle.heads=0", "triangle.heads must be a positive integer, got 0"),
        ("single.head_dim=2.5", "single.head_dim must be a positive integer, got 2.5"),
        ("methods=[fb_bias,fa3]", "methods: unknown ['fa3']"),
        ("ranks=[0]", "ranks: every rank ([0]) must be a positive integer"),
        ("dtype=int8", "dtype must be auto or one of ['bf16', 'fp16', 'fp32'], got 'int8'"),
    ],
)
def test_attention_benchmark_bad_settings_are_one_line_errors(override, needle, tmp_path):
    """Each bad setting is named in one line before any case runs: nothing is written."""
    from test_cli import assert_one_line_error
    from test_cli import run as run_script

    assert_one_line_error(run_script("bench_attention", override, "output_dir=out", cwd=tmp_path), needle)
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "script, override, needle",
    [
        ("bench_modules", "triangle.sizes=[abc]", "triangle.sizes: every entry (['abc']) must be a positive integer"),
        ("bench_modules", "dtype=bf17", "dtype must be auto or one of ['bf16', 'fp16', 'fp32'], got 'bf17'"),
        ("bench_blocks", "sizes.protenix=[x]", "sizes.protenix: every entry (['x']) must be a positive integer"),
        ("bench_diffusion", "diffusion.sizes=[0]", "diffusion.sizes: every entry ([0]) must be a positive integer"),
        ("bench_diffusion", "dtype=int8", "dtype must be auto or one of ['bf16', 'fp16', 'fp32'], got 'int8'"),
    ],
)
def test_module_block_diffusion_benchmark_bad_settings_are_one_line_errors(script, override, needle, tmp_path):
    """As bench_attention: sizes and dtype checked before any case runs (a string of sizes had
    failed every case with a TypeError in the table), nothing written."""
    from test_cli import assert_one_line_error
    from test_cli import run as run_script

    assert_one_line_error(run_script(script, override, "output_dir=out", cwd=tmp_path), needle)
    assert not (tmp_path / "out" / "results.json").exists()


def test_module_benchmark_runs_on_cpu(tmp_path):
    cfg = bench_config(
        "bench_modules",
        tmp_path,
        ["triangle.sizes=[8]", "single.sizes=[8]", "rank=4", "factor_width=16", "warmup_ms=1", "rep_ms=1"],
    )
    records = bench_modules.run(cfg)
    ok = [r for r in records if r.status == "ok"]
    assert {(r.module, r.variant) for r in ok} >= {
        ("triangle_starting", "exact"),
        ("triangle_ending", "lowrank"),
        ("single", "exact"),
        ("single", "torch_sdpa"),
    }
    assert all(r.fwd_ms > 0 and r.fwd_bwd_ms > 0 for r in ok)
    assert (tmp_path / "results.md").exists()


def test_block_benchmark_runs_on_cpu(tmp_path):
    """Real host blocks (Protenix, Boltz-2, OpenFold3; ``hosts/<host>/presets.build_block``) at
    their full widths, tiny N: stock and patched run and the table compares each variant with the
    stock block."""
    cfg = bench_config(
        "bench_blocks",
        tmp_path,
        [
            "hosts=[protenix,boltz,openfold3]",
            "sizes.protenix=[6]",
            "sizes.boltz=[6]",
            "sizes.openfold3=[6]",
            "variants=[stock,exact]",
            "warmup_ms=1",
            "rep_ms=1",
        ],
    )
    records = bench_blocks.run(cfg)
    assert [(r.host, r.variant, r.status) for r in records] == [
        ("protenix", "stock", "ok"),
        ("protenix", "exact", "ok"),
        ("boltz", "stock", "ok"),
        ("boltz", "exact", "ok"),
        ("openfold3", "stock", "ok"),
        ("openfold3", "exact", "ok"),
    ]
    assert all(r.ms > 0 for r in records) and all(
        r.notes["patched"] == 3 for r in records[1::2]
    )  # 2 triangle + 1 single
    assert "| protenix | v1 | 6 | torch | exact |" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
def test_host_peak_memory_follows_an_allocation_and_resets():
    from pairformer_fb.bench.timing import host_peak_bytes, host_peak_reset, host_resident_bytes

    mib = 2**20
    assert host_peak_reset()
    start = host_resident_bytes()
    big = torch.ones(256 * mib // 4)  # 256 MiB, every page written
    peak = host_peak_bytes()
    assert host_peak_bytes(os.getpid()) == peak  # another process's, read the same way: this one's
    del big
    assert peak >= start + 200 * mib
    assert host_peak_reset() and host_peak_bytes() < peak - 200 * mib  # freed, and the peak restarted


def test_host_available_memory_reads_meminfo_and_the_container_limit(tmp_path, monkeypatch):
    from pairformer_fb.bench import timing

    gib = 2**30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:  {8 * gib // 1024} kB\nMemAvailable:  {4 * gib // 1024} kB\n")
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    monkeypatch.setattr(timing, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(timing, "_CGROUP_FILES", ((str(limit), str(usage)),))
    assert timing.host_available_bytes() == 4 * gib  # no cgroup files: the system's
    limit.write_text("max\n")
    usage.write_text(f"{gib}\n")
    assert timing.host_available_bytes() == 4 * gib  # an unlimited container
    limit.write_text(f"{3 * gib}\n")
    assert timing.host_available_bytes() == 2 * gib  # the container's 3 GiB, 1 GiB of it used
    meminfo.unlink()
    assert timing.host_available_bytes() == 2 * gib
    limit.unlink()
    assert timing.host_available_bytes() is None
