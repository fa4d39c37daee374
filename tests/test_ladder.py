"""The ladder (scripts/bench_ladder.py, pairformer_fb/bench/ladder.py) on a CPU: tiny Protenix,
two small rungs (and one rung of tiny OpenFold3 and Boltz-2: the schedules they really run).

* end to end: records (host, variant, tokens, status, peak_gib null on a CPU, seconds per phase
  summing to the total), the cycles / steps / samples each rung really ran (counted on the
  model: trunk passes, diffusion-module calls and their samples) with a reduced long rung, the
  exact variant's coordinates against the original's (and the recorded RMSD against one
  computed here from them), the bias-cache bound recorded, results.md and the PNG;
* an out-of-memory rung (the prediction raising torch.OutOfMemoryError) is recorded as ``oom``
  and the ladder goes on, the model unpatched and the later runs still exact;
* the long-sample builder: exactly the token count, the chains of the sources cycled, real
  featurisation of the result;
* the command line: bad values are one line, exit status 2, nothing written; an output_dir
  holding results is refused without overwrite=true.
"""

import json
import math
import os
import random

import pytest
import torch

os.environ.setdefault("LAYERNORM_TYPE", "torch")
pytest.importorskip("protenix")

from bench_configs import bench_config
from test_cli import assert_one_line_error
from test_cli import run as run_script

from pairformer_fb.bench import ladder, ladder_skips
from pairformer_fb.data.featurize import read_samples
from pairformer_fb.data.structure import ca_coords, ca_rmsd
from pairformer_fb.hosts.protenix.structure import ProtenixHost
from pairformer_fb.hosts.structure_hosts import PHASES
from pairformer_fb.patching.patching import patched_modules

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def config(tmp_path, *overrides):
    return bench_config("bench_ladder", tmp_path / "out", ["model=tiny", "device=cpu", *overrides])


def spy_predictions(monkeypatch, host_cls, trunk: str, diffusion: str, samples, extra=None) -> list[dict]:
    """Wraps ``host_cls.predict`` to record, per prediction, the passes of the model's trunk
    stack (``trunk``: its path in the model), the calls of its diffusion network (``diffusion``)
    with the samples each gets (``samples(args, kwargs)``), and ``extra(model, feats, out)``."""
    calls: list[dict] = []
    real = host_cls.predict

    def predict(self, model, feats):
        seen = {"cycles": 0, "steps": []}
        hooks = [
            model.get_submodule(trunk).register_forward_hook(lambda *_: seen.__setitem__("cycles", seen["cycles"] + 1)),
            model.get_submodule(diffusion).register_forward_pre_hook(
                lambda m, args, kw: seen["steps"].append(samples(args, kw)), with_kwargs=True
            ),
        ]
        try:
            out = real(self, model, feats)
        finally:
            for h in hooks:
                h.remove()
        calls.append({**(extra(model, feats, out) if extra else {}), **seen})
        return out

    monkeypatch.setattr(host_cls, "predict", predict)
    return calls


@pytest.fixture
def spy_predict(monkeypatch):
    """Records, per prediction: tokens, whether the model was patched, the coordinates, the
    trunk passes and the diffusion module's calls with their sample counts."""
    return spy_predictions(
        monkeypatch,
        ProtenixHost,
        "pairformer_stack",
        "diffusion_module",
        lambda args, kw: kw["x_noisy"].shape[-3],
        lambda model, feats, xyz: {
            "tokens": feats["restype"].shape[0],
            "patched": bool(patched_modules(model)),
            "xyz": xyz.clone(),
        },
    )


def test_ladder_on_cpu(tmp_path, spy_predict):
    cfg = config(
        tmp_path, "tokens=[40,24]", "steps=2", "long_rungs.from_tokens=40", "long_rungs.steps=1", "bias_cache_gib=0"
    )
    result = ladder.run(cfg)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == result["records"] and set(saved) >= {"environment", "records", "model", "config"}
    assert "not measured" in saved["environment"]["peak_memory"] and saved["config"]["bias_cache_gib"] == 0
    recs = saved["records"]
    assert [(r["host"], r["tokens"], r["variant"]) for r in recs] == [
        ("protenix", n, v) for n in (24, 40) for v in ("original", "exact")
    ]
    assert [c["tokens"] for c in spy_predict] == [24, 24, 40, 40]
    assert [c["patched"] for c in spy_predict] == [False, True] * 2
    for r, call in zip(recs, spy_predict):
        assert r["status"] == "ok" and r["peak_gib"] is None and r["featurise_s"] > 0
        # Linux: the process's resident memory. The peak may equal the start: after other tests the
        # heap holds freed memory that a tiny model's run reuses without growing (order-dependent)
        assert 0 < r["host_start_gib"] <= r["peak_host_gib"] < 20
        during = r["notes"]["peak_host_gib_during"]  # where it peaked: every timed method of the host
        assert {"get_pairformer_output", "sample_diffusion", "confidence_head", "after confidence_head"} <= set(during)
        assert max(during.values()) == pytest.approx(r["peak_host_gib"], abs=1e-3)
        from test_protenix_lean import LEAN as lean

        assert r["notes"].get("lean_host_methods") == (lean if r["variant"] == "exact" else None)
        assert list(r["seconds"]) == [*PHASES, "total"] and all(v >= 0 for v in r["seconds"].values())
        assert sum(r["seconds"][p] for p in PHASES) == pytest.approx(r["seconds"]["total"], rel=1e-6)
        # what the model really ran: trunk passes, diffusion steps (one module call each), samples
        steps = 1 if r["tokens"] == 40 else 2
        assert (r["cycles"], r["steps"], r["samples"], r["reduced"]) == (1, steps, 5, r["tokens"] == 40)
        assert call["cycles"] == 1 and call["steps"] == [5] * steps
        assert r["n_atoms"] == call["xyz"].shape[0]
    # exact against the original, on the coordinates themselves and through the recorded RMSD
    hcfg = ladder.host_config(cfg)
    atoms = {n: ProtenixHost().featurise(ladder.long_sample(read_samples(["7wux_a2b2"]), n), hcfg)[1] for n in (24, 40)}
    for orig, exact, r in ((spy_predict[0], spy_predict[1], recs[1]), (spy_predict[2], spy_predict[3], recs[3])):
        x, y = orig["xyz"].double(), exact["xyz"].double()
        assert (x - y).norm() / x.norm() < 1e-5
        ca = [ca_coords(atoms[r["tokens"]], t.numpy()) for t in (x, y)]
        assert r["rmsd_vs_original"] == pytest.approx(ca_rmsd(*ca), rel=1e-6, abs=1e-9)
        # the bound 0: no bias kept, every one recomputed (and the coordinates still exact)
        assert r["notes"]["bias_cache"]["limit_gib"] == 0 and r["notes"]["bias_cache"]["admitted"] == 0
        assert r["notes"]["bias_cache"]["refused"] > 0
    md = (out / "results.md").read_text()
    assert md.count("| protenix") == 0 and md.count("| 24 |") == 2 and md.count("| 40 |") == 2
    assert "1 / 1 / 5 *" in md and "Reduced schedule" in md and "not measured on a CPU" in md and "host GiB" in md
    assert "VmHWM" in saved["environment"]["peak_host_memory"] and saved["environment"]["host_memory_available_gib"] > 0
    png = (out / "ladder.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with pytest.raises(FileExistsError, match="overwrite=true to replace it, resume=true"):
        ladder.validate(cfg)
    cfg.overwrite = True
    assert ladder.validate(cfg)[-1] is None  # overwrite: nothing resumed

    # resume=true: the runs the results hold stay, the missing rung runs and joins them
    with pytest.raises(ValueError, match=r"other settings \(samples: 5 -> 3\)"):
        ladder.validate(config(tmp_path, "resume=true", "samples=3", "bias_cache_gib=0"))
    more = ladder.run(config(tmp_path, "tokens=[40,16]", "steps=2", "resume=true", "bias_cache_gib=0"))
    assert [c["tokens"] for c in spy_predict[4:]] == [16, 16]
    assert [(r["tokens"], r["variant"]) for r in more["records"]] == [
        (n, v) for n in (16, 24, 40) for v in ("original", "exact")
    ]
    assert more["records"][2:] == recs and more["earlier_calls"] == [saved["environment"]]
    assert more["records"][1]["rmsd_vs_original"] < 1e-3 and more["records"][0]["date"] != recs[0]["date"]
    assert "Runs of 2 calls" in (out / "results.md").read_text()


def test_oom_is_recorded_and_the_ladder_goes_on(tmp_path, spy_predict, monkeypatch):
    spied = ProtenixHost.predict

    def predict(self, model, feats):
        """The patched 16-token prediction runs out of memory in its first diffusion step."""
        if feats["restype"].shape[0] != 16 or not patched_modules(model):
            return spied(self, model, feats)

        def oom(*_):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        hook = model.diffusion_module.register_forward_pre_hook(oom)
        try:
            return spied(self, model, feats)
        finally:
            hook.remove()

    monkeypatch.setattr(ProtenixHost, "predict", predict)
    result = ladder.run(config(tmp_path, "tokens=[16,24]", "steps=1", "samples=2", "warmup=1"))
    status = [(r["tokens"], r["variant"], r["status"]) for r in result["records"]]
    assert status == [(16, "original", "ok"), (16, "exact", "oom"), (24, "original", "ok"), (24, "exact", "ok")]
    oom = result["records"][1]
    assert "Tried to allocate 20.00 GiB" in oom["notes"]["oom"] and oom["seconds"] is None
    assert oom["notes"]["oom_during"] == "sample_diffusion"  # after the trunk
    # the peaks of the methods that ran, the failing one's too (its segment closed on the error)
    assert {"get_pairformer_output", "sample_diffusion"} <= set(oom["notes"]["peak_host_gib_during"])
    assert "confidence_head" not in oom["notes"]["peak_host_gib_during"] and oom["peak_host_gib"] > 0
    # patched again after the OOM (its bias scope left cleanly), still exact
    assert result["records"][3]["rmsd_vs_original"] < 1e-3 and result["records"][3]["notes"]["bias_cache"]["admitted"]
    assert [(c["tokens"], c["patched"]) for c in spy_predict] == [(16, False)] * 2 + [(24, False)] * 2 + [
        (24, True)
    ] * 2
    assert "| 16 | " in (tmp_path / "out" / "results.md").read_text()
    assert ladder.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not ladder.is_oom(RuntimeError("shape mismatch"))


def test_lean_memory_false_patches_without_the_lean_methods(tmp_path, spy_predict):
    result = ladder.run(
        config(tmp_path, "tokens=[16]", "variants=[exact]", "steps=1", "samples=2", "lean_memory=false")
    )
    (rec,) = result["records"]
    assert rec["status"] == "ok" and rec["notes"]["patched_modules"] > 0 and "lean_host_methods" not in rec["notes"]
    assert result["config"]["lean_memory"] is False


def test_long_sample_hits_the_token_count():
    rng = random.Random(18)
    for names in (["7wux_a2b2"], ["1crn", "1ubq"]):
        sources = read_samples(names)
        whole = "".join(c.sequence for s in sources for c in s.chains)
        for n in [1, len(whole), *rng.sample(range(2, 5 * len(whole)), 4)]:
            sample = ladder.long_sample(sources, n)
            seqs = [c.sequence for c in sample.chains]
            assert sample.n_tokens == n and "".join(seqs) == (whole * (n // len(whole) + 1))[:n]
            assert [c.chain_id for c in sample.chains][:3] == ["A", "B", "C"][: len(seqs)]
            assert len({c.chain_id for c in sample.chains}) == len(seqs)
            assert sample.entities == list(dict.fromkeys(seqs))
    sample = ladder.long_sample(read_samples(["1crn"]), 100)  # 46 + 46 + 8: chains AA.. beyond Z are not needed here
    feats, atoms = ProtenixHost().featurise(sample, ladder.host_config(bench_config("bench_ladder", "x", [])))
    assert feats["restype"].shape[0] == 100 and feats["asym_id"].tolist() == [0] * 46 + [1] * 46 + [2] * 8
    assert feats["entity_id"].tolist() == [0] * 92 + [1] * 8
    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        ladder.long_sample(read_samples(["1crn"]), 0)


def test_schedule_of_a_long_rung():
    cfg = bench_config("bench_ladder", "x", ["cycles=4", "long_rungs.from_tokens=1000", "long_rungs.steps=500"])
    preset = {"cycles": 10, "steps": 200, "samples": 5}
    assert ladder.rung_schedule(cfg, 999, preset) == ({"cycles": 4, "steps": 200, "samples": 5}, False)
    # long rungs take at most long_rungs' cycles / steps: never more than the others
    assert ladder.rung_schedule(cfg, 1000, preset) == ({"cycles": 1, "steps": 200, "samples": 5}, True)


def test_bad_arguments_are_one_line_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    for args, needle in (
        (["tokens=[1024,0]", "output_dir=out"], "tokens: every rung (a token count) ([1024, 0])"),
        (["output_dir=full"], "already holds a results.json: give overwrite=true"),
    ):
        assert_one_line_error(run_script("bench_ladder", *args, cwd=tmp_path), needle)
    assert (tmp_path / "full" / "results.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing written


@pytest.mark.parametrize(
    "override, needle",
    [
        (
            "variants=[stock]",
            "variants: unknown ['stock']; expected distinct names from ['original', 'exact', 'lowrank']",
        ),
        ("tokens=[64,64]", "tokens names a rung twice"),
        ("long_rungs.cycles=0", "long_rungs.cycles must be a positive integer or null"),
        ("steps=2.5", "steps must be a positive integer or null"),
        ("bias_cache_gib=-1", "bias_cache_gib must be 'auto', null (no bound) or a number of GiB >= 0"),
        ("time_budget_s=0", "time_budget_s must be a number of seconds > 0"),
        ("host_memory_check=maybe", "host_memory_check must be true, false or isolate"),
        ("memory_detail=maybe", "memory_detail must be true or false"),
        (("memory_detail=true", "cuda_graphs=true"), "memory_detail=true needs cuda_graphs=false"),
        ("lean_memory=1", "lean_memory must be true or false"),
        ("sources=[nosuch]", "sample 'nosuch'"),
    ],
)
def test_bad_values_are_found_before_any_model_work(tmp_path, override, needle):
    with pytest.raises(ValueError) as e:
        ladder.validate(config(tmp_path, *([override] if isinstance(override, str) else override)))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_openfold3_rungs_run_the_schedule_set(tmp_path, monkeypatch):
    """Another host: OpenFold3's cycles (num_recycles + 1), steps and samples as the model runs
    them (trunk passes, diffusion-module calls and the samples each gets), exact agreeing."""
    pytest.importorskip("openfold3")
    from pairformer_fb.hosts.openfold3.structure import OpenFold3Host

    calls = spy_predictions(
        monkeypatch,
        OpenFold3Host,
        "pairformer_stack",
        "diffusion_module",
        lambda args, kw: (kw.get("xl_noisy") if "xl_noisy" in kw else args[1]).shape[-3],
    )
    result = ladder.run(config(tmp_path, "host=openfold3", "tokens=[16]", "cycles=3", "steps=2", "samples=2"))
    for r, seen in zip(result["records"], calls, strict=True):
        assert r["status"] == "ok" and (r["cycles"], r["steps"], r["samples"]) == (3, 2, 2)
        assert seen == {"cycles": 3, "steps": [2, 2]}
    assert result["records"][1]["rmsd_vs_original"] < 1e-3
    assert result["model"]["preset_schedule"] == {"cycles": 2, "steps": 2, "samples": 1}  # the tiny preset's


def test_time_budget_skips_runs_that_would_overrun():
    cfg = bench_config("bench_ladder", "x", ["time_budget_s=100"])
    done = ladder.Record("protenix", "exact", 1000, 1, seconds={"total": 10.0}, cycles=1, steps=20, samples=5)
    nxt = ladder.Record("protenix", "exact", 2000, 1, cycles=1, steps=20, samples=5)
    assert ladder_skips.over_budget(cfg, [done], nxt, 10.0) is None  # 10 + 10 x 2^3 = 90 s <= 100
    assert "estimated at 80 s" in ladder_skips.over_budget(cfg, [done], nxt, 30.0)  # would end at 110 s
    other = ladder.Record("protenix", "original", 2000, 1, cycles=1, steps=20, samples=5)
    assert ladder_skips.over_budget(cfg, [done], other, 30.0) is None  # no finished rung of its variant to scale
    assert "spent" in ladder_skips.over_budget(cfg, [done], other, 100.0)
    cfg.time_budget_s = None
    assert ladder_skips.over_budget(cfg, [done], nxt, 1e9) is None


def test_time_budget_scales_by_the_growth_measured_between_two_rungs():
    """The exponent of seconds in tokens comes from the two longest finished rungs with the same
    schedule: the variant's own, else another variant's, kept within [2, 3]; other schedules and
    a single rung do not count. The numbers are the H200 ladder's (benchmarks/ladder_h200/)."""
    cfg = bench_config("bench_ladder", "x", ["time_budget_s=1000"])

    def rung(variant, tokens, total, steps=20):
        return ladder.Record("protenix", variant, tokens, 1, seconds={"total": total}, cycles=1, steps=steps, samples=5)

    exact = [rung("exact", 2048, 21.0), rung("exact", 4096, 99.31)]
    stock = rung("original", 2048, 39.31)
    nxt = ladder.Record("protenix", "original", 6144, 1, cycles=1, steps=20, samples=5)
    k, why = ladder_skips.time_exponent([*exact, stock], nxt)
    assert k == pytest.approx(math.log(99.31 / 21.0) / math.log(2)) and "exact's 2048- and 4096-token" in why
    guess = 39.31 * 3**k  # ~460 s where the cube says 1,061
    assert ladder_skips.over_budget(cfg, [*exact, stock], nxt, 1000 - guess - 1) is None
    assert f"estimated at {guess:.0f} s" in ladder_skips.over_budget(cfg, [*exact, stock], nxt, 1000 - guess + 1)
    own = [stock, rung("original", 4096, 39.31 * 2**2.6)]  # its own two rungs first
    assert ladder_skips.time_exponent([*exact, *own], nxt)[0] == pytest.approx(2.6)
    assert ladder_skips.time_exponent([stock, rung("exact", 1024, 1.0), rung("exact", 2048, 100.0)], nxt)[0] == 3.0
    assert ladder_skips.time_exponent([stock, rung("exact", 1024, 10.0), rung("exact", 2048, 11.0)], nxt)[0] == 2.0
    other_schedule = [rung("exact", 1024, 5.0, steps=200), rung("exact", 2048, 21.0)]
    assert ladder_skips.time_exponent([*other_schedule, stock], nxt) == (3.0, "3, nothing measured to fit it to")


class FakeMeter:
    """Memory in use and its peak since the last reset, moved by hand."""

    def __init__(self):
        self.now = self.top = 0

    def alloc(self, n):
        self.now += n
        self.top = max(self.top, self.now)

    def reset(self):
        self.top = self.now

    def read(self):
        return self.top


def test_phase_timer_says_in_which_method_memory_peaked():
    """PhaseTimer(memory=True): a segment's peak counts for the innermost timed method running
    then (not for the one calling it), outside them for "after" the last one; a method that
    raises (an OOM) still gets the peak it reached; peak() is the overall highest."""
    from types import SimpleNamespace

    from pairformer_fb.bench.structure import PhaseTimer

    meter = FakeMeter()

    class Toy:
        def outer(self, fail=False):
            meter.alloc(5)
            try:
                self.inner(fail)
            finally:
                meter.alloc(-5)
            meter.alloc(1), meter.alloc(-1)

        def inner(self, fail):
            meter.alloc(10)
            meter.alloc(-10)
            if fail:
                meter.alloc(30)
                meter.alloc(-30)
                raise torch.OutOfMemoryError("toy")

    toy = Toy()
    host = SimpleNamespace(
        phase_wraps=lambda model: [(toy, "outer", "outer", None), (toy, "inner", "inner", None)],
        phases=lambda spans, stamps: {},
    )
    timer = PhaseTimer(None, torch.device("cpu"), host).install()
    timer.meters = {"fake": (meter.reset, meter.read)}
    try:
        timer.reset_memory()
        timer.run(lambda: (toy.outer(), meter.alloc(7), meter.alloc(-7)))
        assert timer.peaks["fake"] == {"before the first phase": 0, "outer": 5, "inner": 15, "after outer": 7}
        assert timer.peak("fake") == 15
        timer.reset_memory()
        with pytest.raises(torch.OutOfMemoryError):
            timer.run(lambda: toy.outer(fail=True))
        assert timer.peaks["fake"]["inner"] == 35 and timer.peaks["fake"]["outer"] == 5
        assert timer.peaks["fake"]["after outer"] == 0 and timer.peak("fake") == 35
    finally:
        timer.remove()
    assert "outer" not in vars(toy)


def test_module_peaks_per_block_module_shared_with_the_phase_timer():
    """memory_detail's hooks: the modules inside the blocks of module lists, named with the block
    index as *; each stretch's peak counts for the innermost hooked module (any block's: the
    highest); the phase timer sharing the meter still sees every peak of its phase, and a
    module that raises is closed with it."""
    from types import SimpleNamespace

    from torch import nn

    from pairformer_fb.bench.module_peaks import ModulePeaks, detail_modules
    from pairformer_fb.bench.structure import PhaseTimer

    meter = FakeMeter()

    class Step(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = size

        def forward(self, x):
            meter.alloc(self.size)
            meter.alloc(-self.size)
            if x == "fail":
                meter.alloc(50), meter.alloc(-50)
                raise torch.OutOfMemoryError("toy")
            return x

    class Block(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.mul, self.att = Step(size), Step(2 * size)

        def forward(self, x):
            meter.alloc(1)  # the block's own, outside its hooked children
            x = self.att(self.mul(x))
            meter.alloc(-1)
            return x

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.Module()
            self.stack.blocks = nn.ModuleList([Block(3), Block(4)])
            self.head = Step(100)  # not in a block: not hooked

        def run(self, x):
            for b in self.stack.blocks:
                x = b(x)
            return self.head(x)

    toy = Toy()
    found = detail_modules(toy)
    assert sorted(found) == ["stack.blocks.*.att", "stack.blocks.*.mul"] and len(found["stack.blocks.*.att"]) == 2
    host = SimpleNamespace(phase_wraps=lambda model: [(toy, "run", "run", None)], phases=lambda spans, stamps: {})
    timer = PhaseTimer(None, torch.device("cpu"), host).install()
    timer.meters = {"gpu": (meter.reset, meter.read)}
    peaks = ModulePeaks(timer.meters).install(found)
    try:
        timer.reset_memory()
        timer.run(lambda: toy.run(0))
        assert peaks.peaks == {"stack.blocks.*.mul": 5, "stack.blocks.*.att": 9}  # 1 of the block + 4 x (1, 2)
        assert timer.peaks["gpu"]["run"] == 100 and timer.peak("gpu") == 100  # the head's, unhooked
        timer.reset_memory()
        with pytest.raises(torch.OutOfMemoryError):
            timer.run(lambda: toy.run("fail"))
        assert peaks.peaks["stack.blocks.*.mul"] == 51 and timer.peak("gpu") == 51  # the first block: 1 + 50
        assert peaks._running == []  # closed by the exception
    finally:
        peaks.remove()
        timer.remove()
    assert not toy.stack.blocks[0].mul._forward_pre_hooks and timer.meters["gpu"] == (meter.reset, meter.read)


def test_memory_detail_records_the_block_modules_peaks(tmp_path, monkeypatch):
    """memory_detail=true (with a GPU meter; a fake one here): the record keeps the highest
    per-module peaks of the patched model's block stacks, by name with * for the block (the
    hooks' removal: test_module_peaks_per_block_module_shared_with_the_phase_timer)."""
    from pairformer_fb.bench import structure

    used = FakeMeter()
    used.alloc(2**30)
    monkeypatch.setattr(structure, "_peak_meters", lambda device: {"gpu": (used.reset, used.read)})
    rec = ladder.run(config(tmp_path, "tokens=[24]", "variants=[exact]", "steps=1", "memory_detail=true"))["records"][0]
    detail = rec["notes"]["peak_gib_in_modules"]
    assert rec["status"] == "ok" and 0 < len(detail) <= ladder.DETAIL_TOP and rec["peak_gib"] == 1.0
    assert all(".*." in name and gib == 1.0 for name, gib in detail.items())


def test_host_memory_check_skips_runs_that_would_not_fit(monkeypatch):
    """A run whose host memory, scaled from the last finished rung of its variant by the square
    of the token ratio, exceeds what is available is skipped with the reason; fitting runs, runs
    with nothing to scale from, and host_memory_check=false are not."""
    gib = 2**30
    cfg = bench_config("bench_ladder", "x", [])
    assert cfg.host_memory_check is True  # the default
    done = ladder.Record("protenix", "exact", 1000, 1, peak_host_gib=7.0, host_start_gib=5.0)  # grew 2 GiB
    nxt = ladder.Record("protenix", "exact", 2000, 1)  # 2 x 2^2 = 8 GiB
    monkeypatch.setattr(ladder_skips, "host_available_bytes", lambda: 7 * gib)
    reason = ladder_skips.over_host_memory(cfg, [done], nxt)
    assert (
        reason.startswith("skipped: host memory: this run would take ~8 GiB more") and "7 GiB are available" in reason
    )
    monkeypatch.setattr(ladder_skips, "host_available_bytes", lambda: 9 * gib)
    assert ladder_skips.over_host_memory(cfg, [done], nxt) is None
    monkeypatch.setattr(ladder_skips, "host_available_bytes", lambda: 1 * gib)
    other = ladder.Record("protenix", "original", 2000, 1)
    assert ladder_skips.over_host_memory(cfg, [done], other) is None  # no finished rung of its variant
    failed = ladder.Record("protenix", "exact", 1500, 1, status="oom", peak_host_gib=50.0, host_start_gib=5.0)
    assert "the 1000-token rung's 2.0 GiB" in ladder_skips.over_host_memory(cfg, [done, failed], nxt)  # ok runs only
    monkeypatch.setattr(ladder_skips, "host_available_bytes", lambda: None)  # not Linux: no estimate
    assert ladder_skips.over_host_memory(cfg, [done], nxt) is None
    monkeypatch.setattr(ladder_skips, "host_available_bytes", lambda: 1 * gib)
    cfg.host_memory_check = False
    assert ladder_skips.over_host_memory(cfg, [done], nxt) is None


def test_isolate_runs_a_flagged_run_in_a_child_process(tmp_path, monkeypatch):
    """host_memory_check=isolate: the run the check flags runs in a child process (the real
    ladder on the same settings), and its record is the child's (ok, timed, measured), with the
    reason noted; runs the check lets through stay in the ladder's process."""
    from pairformer_fb.bench import ladder_isolated

    cfg = config(tmp_path, "tokens=[24,40]", "variants=[exact]", "steps=1", "host_memory_check=isolate")
    flag = "skipped: host memory: this run would take ~9 GiB more"  # the check's verdict on the 40-token rung
    monkeypatch.setattr(ladder, "over_host_memory", lambda cfg, records, rec: flag if rec.tokens == 40 else None)
    commands = []
    real = ladder_isolated.child_command
    monkeypatch.setattr(ladder_isolated, "child_command", lambda p: commands.append(p) or real(p))
    recs = {r["tokens"]: r for r in ladder.run(cfg)["records"]}
    assert len(commands) == 1 and "isolated" not in recs[24]["notes"]
    child = recs[40]
    assert child["status"] == "ok" and child["seconds"]["total"] > 0 and child["peak_host_gib"] > 0
    assert (
        child["notes"]["isolated"]
        == "run in a child process (host_memory_check=isolate): this run would take ~9 GiB more"
    )
    assert child["notes"]["patched_modules"] > 0 and child["date"] == recs[24]["date"]


@pytest.mark.parametrize(
    "code, status, during",
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "oom", "host memory: the system ended the run"),
        ("raise SystemExit(3)", "error: the isolated run ended with exit status 3 and no record", None),
    ],
)
def test_an_isolated_run_the_system_ends_is_recorded(tmp_path, monkeypatch, code, status, during):
    """A child ended by SIGKILL (the OOM killer's way) is an ``oom`` of host memory with the peak
    it reached; other endings without a record are errors; the ladder goes on."""
    import sys

    from pairformer_fb.bench import ladder_isolated

    monkeypatch.setattr(ladder_isolated, "child_command", lambda p: [sys.executable, "-c", code])
    rec = ladder.Record("protenix", "original", 6144, 1, date="d")
    cfg = bench_config("bench_ladder", tmp_path / "out", ["host_memory_check=isolate"])
    ladder_isolated.run_isolated(cfg, rec, "skipped: host memory: this run would take ~200 GiB more", poll_s=0.01)
    assert rec.status == status and rec.date == "d"
    assert rec.notes["isolated"].endswith("this run would take ~200 GiB more")
    assert rec.notes.get("oom_during", "").startswith(during or "") and (during is None) == (
        "oom_during" not in rec.notes
    )


def test_boltz_rungs_run_the_schedule_set(tmp_path, monkeypatch):
    """Boltz-2: its cycles (recycling_steps + 1), steps and samples as the model runs them (trunk
    passes, score-model calls and the samples each gets), exact agreeing, the cached biases released at the confidence module."""
    pytest.importorskip("boltz")
    from pairformer_fb.hosts.boltz.structure import BoltzHost

    calls = spy_predictions(
        monkeypatch,
        BoltzHost,
        "pairformer_module",
        "structure_module.score_model",
        lambda args, kw: kw["r_noisy"].shape[0],  # [batch x samples, atoms, 3], batch 1
    )
    result = ladder.run(config(tmp_path, "host=boltz", "tokens=[16]", "cycles=3", "steps=2", "samples=2"))
    for r, seen in zip(result["records"], calls, strict=True):
        assert r["status"] == "ok" and (r["cycles"], r["steps"], r["samples"]) == (3, 2, 2)
        assert seen == {"cycles": 3, "steps": [2, 2]}
    exact = result["records"][1]
    assert exact["variant"] == "exact" and exact["rmsd_vs_original"] < 1e-3
    cache = exact["notes"]["bias_cache"]
    assert cache["releases"] >= 1 and cache["held_gib"] == 0 and cache["peak_held_gib"] > 0
