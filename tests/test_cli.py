"""The workflow seams of issue 16, each as the user's command: the documented paths work at their
defaults, every error is one line (``<script>: error: ...``, exit status 2) before any work and
leaves nothing behind, unknown keys are rejected, ``--help`` describes the script's own options."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py"))
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "LAYERNORM_TYPE": "torch"}


def run(script, *args, cwd, timeout=600):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and ": error: " in lines[0], proc.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def need_protenix():
    pytest.importorskip("protenix")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Protenix checkpoint (mode 0644) and its conversion by the script at its defaults
    (the fit shortened)."""
    need_protenix()
    from pairformer_fb.hosts.presets import randomise_
    from pairformer_fb.hosts.protenix.presets import build_protenix

    d = tmp_path_factory.mktemp("seams")
    model, _ = build_protenix("tiny")
    randomise_(model, seed=0)
    torch.save({"model": model.state_dict()}, d / "tiny.pt")
    os.chmod(d / "tiny.pt", 0o644)
    done = run(
        "convert_checkpoint",
        "input=tiny.pt",
        "output=conv.pt",
        "model=tiny",
        "fit.steps=0",
        "fit.max_tokens=[16]",
        cwd=d,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return d


# ---------------------------------------------------------------------------------------------
# items 1, 2 and 8 (file mode, console): convert, then benchmark the converted checkpoint


def test_converted_checkpoint_benchmarks_at_the_defaults(tiny, tmp_path):
    """convert_checkpoint.py ... model=tiny, then benchmark.py checkpoint=conv.pt: the lowrank
    variant patches what the checkpoint's metadata records (the trunk), and runs."""
    proc = run(
        "benchmark",
        f"checkpoint={tiny / 'conv.pt'}",
        "samples=[1crn]",
        "warmup=0",
        f"output_dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    low = next(r for r in result["records"] if r["variant"] == "lowrank")
    assert low["status"] == "ok" and low["notes"]["factors"] == "from the converted checkpoint"
    meta = torch.load(tiny / "conv.pt", weights_only=True)["pairformer_fb"]
    assert low["notes"]["patched_modules"] == len(meta["modules"]) and low["notes"]["stacks"] == ["pairformer"]
    # item 8: no host prints or library warnings: stdout is the results table
    assert "scheduler" not in proc.stdout and proc.stdout.lstrip().startswith("# Structure benchmark")
    assert "Warning" not in proc.stderr


def test_failure_status_keeps_the_whole_message():
    from pairformer_fb.bench.timing import failure_status

    msg = "lacks factor networks for 108 patched modules (e.g. " + "x" * 400 + ")\nsecond line"
    assert failure_status(ValueError(msg)).endswith("x" * 400 + ") second line")


def test_convert_refuses_an_existing_output_and_keeps_the_input_mode(tiny):
    out = tiny / "conv.pt"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # the input's mode, not mkstemp's 0600
    before = out.read_bytes()
    bad = run("convert_checkpoint", "input=tiny.pt", "output=conv.pt", "model=tiny", "patch.rank=8", cwd=tiny)
    assert_one_line_error(bad, "conv.pt exists", "overwrite=true")
    assert out.read_bytes() == before
    again = run(
        "convert_checkpoint",
        "input=tiny.pt",
        "output=conv2.pt",
        "model=tiny",
        "fit.steps=0",
        "fit.max_tokens=[16]",
        "patch.rank=8",
        cwd=tiny,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    done = run(
        "convert_checkpoint",
        "input=tiny.pt",
        "output=conv2.pt",
        "model=tiny",
        "fit.steps=0",
        "fit.max_tokens=[16]",
        "patch.rank=4",
        "overwrite=true",
        cwd=tiny,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(tiny / "conv2.pt", weights_only=True)["pairformer_fb"]["factor_config"]["rank"] == 4
    assert not list(tiny.glob(".*.tmp"))


def test_convert_into_an_unwritable_place_fails_before_the_fit(tiny, tmp_path):
    (tmp_path / "file").write_text("")
    bad = run(
        "convert_checkpoint",
        f"input={tiny / 'tiny.pt'}",
        f"output={tmp_path / 'nodir' / 'x.pt'}",
        "model=tiny",
        cwd=tmp_path,
    )
    assert_one_line_error(bad, "directory does not exist")
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        bad = run(
            "convert_checkpoint", f"input={tiny / 'tiny.pt'}", f"output={ro / 'x.pt'}", "model=tiny", cwd=tmp_path
        )
        assert_one_line_error(bad, "cannot create files")


# ---------------------------------------------------------------------------------------------
# item 3: the README's resume command after a finished run


def test_finetune_resume_after_a_finished_run(tiny, tmp_path):
    base = [
        f"checkpoint={tiny / 'conv.pt'}",
        "output_dir=ft_out",
        "model=tiny",
        "data.crop_size=8",
        "data.samples=[1crn,1ubq]",
        "trainer.save_every=1",
        "progress=false",
    ]
    done = run("finetune", *base, "trainer.max_steps=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    again = run("finetune", *base, "trainer.max_steps=2", "resume=ft_out/checkpoints/step_0000001.pt", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    meta = torch.load(tmp_path / "ft_out" / "finetuned_fb.pt", weights_only=True)["pairformer_fb"]
    assert meta["finetune"]["steps"] == 2
    # a fresh run into it still refuses, with another output_name too (its logs and report would be
    # replaced); a truncated resume file is one line, before any work
    earlier = "already holds a train_log.csv and a finetune_report.json: give overwrite=true to replace them"
    assert_one_line_error(run("finetune", *base, "trainer.max_steps=1", cwd=tmp_path), earlier)
    log = (tmp_path / "ft_out" / "train_log.csv").read_text()
    assert_one_line_error(run("finetune", *base, "trainer.max_steps=1", "output_name=other.pt", cwd=tmp_path), earlier)
    assert (tmp_path / "ft_out" / "train_log.csv").read_text() == log
    assert not (tmp_path / "ft_out" / "other.pt").exists()
    state = tmp_path / "ft_out" / "checkpoints" / "step_0000001.pt"
    (tmp_path / "trunc.pt").write_bytes(state.read_bytes()[:1000])
    bad = run("finetune", *base[:1], "output_dir=ft_new", *base[2:], "resume=trunc.pt", cwd=tmp_path)
    assert_one_line_error(bad, "resume=", "truncated or corrupt")
    assert not (tmp_path / "ft_new").exists()


# ---------------------------------------------------------------------------------------------
# item 4: benchmark errors are one line, before any model work, nothing written


def test_benchmark_errors_are_one_line_and_write_nothing(tiny, tmp_path):
    (tmp_path / "bad.fasta").write_text(">x\nMKTJ\n")
    (tmp_path / "trunc.pt").write_bytes((tiny / "conv.pt").read_bytes()[:1000])
    torch.save(
        {"state_dict": {"pairformer_module.layers.0.attention.proj_q.weight": torch.zeros(2, 2)}},
        tmp_path / "boltz.ckpt",
    )
    (tmp_path / "file").write_text("")
    cases = [
        (["samples=[missing.fasta]"], "does not exist"),
        (["samples=[bad.fasta]"], "unknown residue letter 'J'"),
        (["checkpoint=trunc.pt"], "truncated or corrupt"),
        (["checkpoint=boltz.ckpt"], "is a boltz checkpoint"),
        (["rank=0"], "rank must be an integer >= 1"),
        (["warmup=abc"], "warmup must be an integer >= 0, got 'abc'"),
        (["repeats=true"], "repeats must be an integer >= 1, got True"),
        (["device=gpu"], "device must be one of auto, cuda, cpu, got 'gpu'"),
    ]
    for args, needle in cases:
        assert_one_line_error(run("benchmark", *args, "output_dir=out", cwd=tmp_path), needle)
        assert not (tmp_path / "out").exists(), args
    assert_one_line_error(run("benchmark", "output_dir=file/out", cwd=tmp_path), "output_dir=file/out")


# ---------------------------------------------------------------------------------------------
# items 5 and 7: unknown keys, --help, for every script


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_rejects_unknown_keys_and_helps(script, tmp_path):
    bad = run(script, "+rnak=8", cwd=tmp_path)
    assert_one_line_error(bad, "unknown key 'rnak'")
    assert not any(tmp_path.iterdir())  # no .hydra/, no log file
    helped = run(script, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "output" in helped.stdout and "#" in helped.stdout  # options with their descriptions
    if script != "finetune":
        assert "finetune" not in helped.stdout.replace("finetune.py", "")  # only its own options


@pytest.mark.parametrize(
    "script, arg, needle",
    [
        ("bench_modules", "device=gpu", "device must be one of auto, cuda, cpu, got 'gpu'"),
        ("bench_attention", "rep_ms=abc", "rep_ms must be a number >= 1, got 'abc'"),
        ("bench_blocks", "seed=x", "seed must be an integer >= 0, got 'x'"),
    ],
)
def test_common_settings_are_checked_for_every_script(script, arg, needle, tmp_path):
    assert_one_line_error(run(script, arg, "output_dir=out", cwd=tmp_path), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config, arg, needle",
    [
        ("bench_attention", "backward=no", "backward must be true or false, got 'no'"),
        ("convert_checkpoint", "allow_pickle=no", "allow_pickle must be true or false, got 'no'"),
        ("bench_ladder", "resume=no", "resume must be true or false, got 'no'"),
        ("bench_attention", "ranks=16", 'ranks must be a list, e.g. "ranks=[a,b]", got 16'),
        ("bench_attention", "methods=fb_bias", "methods must be a list"),
        ("bench_modules", "modules=single", "modules must be a list"),
        ("finetune", "train.unfreeze=abc", "train.unfreeze must be a list"),
        ("bench_diffusion", "n_sample=two", "n_sample must be a number, got 'two'"),
        ("benchmark", "overrides=abc", 'overrides must be a mapping, e.g. "overrides={a:1}"'),
    ],
)
def test_a_setting_of_another_kind_than_its_default_is_one_line(config, arg, needle):
    """A bool setting takes true / false ("no" was read as on), a list setting a list (a single
    value was split into letters: unfreeze=abc trained every parameter matching a, b or c), a
    number a number, a mapping a mapping: named while the command line is read, before any work."""
    from pairformer_fb.cli import CONFIGS, UsageError, compose_config

    config_dir = CONFIGS / "finetune" if config == "finetune" else CONFIGS
    with pytest.raises(UsageError, match=re.escape(needle)):
        compose_config(config, [arg], config_dir=config_dir)


def test_an_empty_output_dir_is_one_line(tmp_path):
    """output_dir= (empty) used to skip the checks and write into the working folder."""
    assert_one_line_error(
        run("bench_attention", "output_dir=", cwd=tmp_path), "output_dir must be a folder path, got ''"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script",
    [
        "benchmark",
        "bench_attention",
        "bench_blocks",
        "bench_boltz_diffusion",
        "bench_diffusion",
        "bench_ladder",
        "bench_modules",
        "fuzz_op",
        "tune_kernels",
    ],
)
def test_earlier_results_are_not_replaced_unasked(script, tmp_path):
    """An output_dir that already holds a results.json is one line naming overwrite=true (and the
    ladder's resume=true), before any work; the file stays as it was."""
    results = tmp_path / "out" / "results.json"
    results.parent.mkdir()
    results.write_text('{"earlier": true}')
    line = assert_one_line_error(
        run(script, "output_dir=out", cwd=tmp_path), "output_dir=out already holds a results.json: give overwrite=true"
    )
    assert ("resume=true" in line) == (script == "bench_ladder")
    assert results.read_text() == '{"earlier": true}'
    assert [p.name for p in results.parent.iterdir()] == ["results.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_tune_kernels_without_a_gpu_is_one_line(tmp_path):
    assert_one_line_error(run("tune_kernels", "output_dir=out", cwd=tmp_path), "no CUDA device here")


def test_check_settings_names_the_first_bad_setting():
    from pairformer_fb.cli import check_settings

    settings = [("a.n", "int", 1), ("a.x", "number", 0), ("flag", "bool", None), ("mode", ("fast", "slow"), None)]
    check_settings({"a": {"n": 3, "x": 0.5}, "flag": False, "mode": "slow"}, settings)
    check_settings({"a": {"n": None}}, settings)  # absent or null: the default applies
    for cfg, message in [
        ({"a": {"n": 0}}, "a.n must be an integer >= 1, got 0"),
        ({"a": {"n": True}}, "a.n must be an integer >= 1, got True"),
        ({"a": {"n": 2, "x": -1.0}}, "a.x must be a number >= 0, got -1.0"),
        ({"a": {"x": "1"}}, "a.x must be a number >= 0, got '1'"),
        ({"flag": "yes"}, "flag must be true or false, got 'yes'"),
        ({"mode": "medium"}, "mode must be one of fast, slow, got 'medium'"),
    ]:
        with pytest.raises(ValueError) as e:
            check_settings(cfg, settings)
        assert str(e.value) == message


def test_help_describes_the_options():
    from pairformer_fb.cli import CONFIGS, help_text

    text = help_text("benchmark", "doc")
    assert "rank: 32" in text and "factor rank of untrained factor networks" in text and "hydra" not in text
    text = help_text("finetune", "doc", config_dir=CONFIGS / "finetune")
    assert "model=OPTION" in text and "tiny             Protenix preset 'tiny'" in text


def test_plus_keys_under_free_form_mappings_are_allowed():
    from pairformer_fb.cli import UsageError, compose_config

    cfg = compose_config("benchmark", ["+overrides={model.N_cycle:4}", "rank=4"])
    assert cfg.overrides == {"model.N_cycle": 4} and cfg.rank == 4
    with pytest.raises(UsageError, match="did you mean rank"):
        compose_config("benchmark", ["++rnak=4"])
    with pytest.raises(UsageError, match="input=, output= must be given"):
        compose_config("convert_checkpoint", [])


# ---------------------------------------------------------------------------------------------
# items 6 and 8: patch_model selecting nothing, lowercase sequences, the triton backend on CPU


def test_patch_model_selecting_nothing_is_an_error():
    need_protenix()
    import pairformer_fb as fb
    from pairformer_fb.hosts.protenix.presets import build_protenix

    model, _ = build_protenix("tiny")
    with pytest.raises(ValueError, match=r"selected no module: mode=\{'lowrank': \[5\]\}.*block indices are 0..1"):
        fb.patch_model(model, mode={"lowrank": [5]})
    assert not fb.patching.patching.patched_modules(model)


def test_lowercase_sequences_are_upper_cased(tmp_path):
    from pairformer_fb.data.featurize import read_samples

    (tmp_path / "low.fasta").write_text(">x\nmktayiakqr\n")
    (s,) = read_samples([str(tmp_path / "low.fasta")])
    assert s.chains[0].sequence == "MKTAYIAKQR"


def test_triton_backend_on_cpu_says_what_is_wrong(monkeypatch):
    from pairformer_fb import flash_bias_attention

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors, but q is on cpu"):
        flash_bias_attention(q, q, q, backend="triton")


def _bench_run(module: str, config: str, args, tmp_path):
    """``module``.run on ``config`` composed with ``args`` (output under tmp_path)."""
    import importlib

    from pairformer_fb.cli import compose_config

    cfg = compose_config(config, [*args, f"output_dir={tmp_path / 'out'}"])
    return importlib.import_module(f"pairformer_fb.bench.{module}").run(cfg)


@pytest.mark.parametrize(
    "module, config, args, needle",
    [
        ("diffusion", "bench_diffusion", ["n_sample=0"], "n_sample must be an integer >= 1, got 0"),
        (
            "diffusion",
            "bench_diffusion",
            ["diffusion.heads=7"],
            "diffusion.c_a = 768 is not divisible by diffusion.heads = 7",
        ),
        ("diffusion", "bench_diffusion", ["modules=[]"], "modules: empty; expected distinct names from"),
        (
            "boltz_diffusion",
            "bench_boltz_diffusion",
            ["atom.heads=3"],
            "atom.dim = 128 is not divisible by atom.heads = 3",
        ),
        ("modules", "bench_modules", ["single.heads=5"], "single.c_s = 384 is not divisible by single.heads = 5"),
        ("blocks", "bench_blocks", ["single_heads=7"], "c_s = 384 is not divisible by single_heads = 7"),
        ("diffusion", "bench_diffusion", ["variants=[exact_uncahced]"], "variants: unknown ['exact_uncahced']"),
        ("boltz_diffusion", "bench_boltz_diffusion", ["variants=[exac]"], "variants: unknown ['exac']"),
        ("boltz_diffusion", "bench_boltz_diffusion", ["diffusion.bias_layers=0"], "diffusion.bias_layers must be"),
        ("modules", "bench_modules", ["modules=[triangle_start]"], "modules: unknown ['triangle_start']"),
        ("modules", "bench_modules", ["triangle.c_z=0"], "triangle.c_z must be an integer >= 1, got 0"),
        ("blocks", "bench_blocks", ["hosts=[protenx]"], "hosts: unknown ['protenx']"),
        ("blocks", "bench_blocks", ["single_heads=0"], "single_heads must be an integer >= 1, got 0"),
        ("attention", "bench_attention", ["methods=[]"], "methods: empty"),
        ("structure", "benchmark", ["stacks=[]"], "stacks: empty; expected distinct names from ['pairformer'"),
        ("structure", "benchmark", ["kinds=[triangel]"], "kinds: unknown ['triangel']"),
        ("structure", "benchmark", ["dtype=bf32"], "dtype must be one of auto, bf16, fp16, fp32, got 'bf32'"),
        ("structure", "benchmark", ["+overrides={model.N_cylce:4}"], "'model.N_cylce' is not a Protenix setting"),
    ],
)
def test_benchmarks_check_names_and_shapes_before_any_work(module, config, args, needle, tmp_path):
    """Found by a review: these ran (typo'd variants timed under the typo, an empty list replaced by
    the defaults) or failed after the work with a missing results.md; now one error, nothing written."""
    with pytest.raises(ValueError, match=re.escape(needle)):
        _bench_run(module, config, args, tmp_path)
    assert not (tmp_path / "out").exists()


def test_kernel_configs_that_are_not_json_name_the_setting(tmp_path):
    bad = tmp_path / "tiles.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match=re.escape(f"kernel_configs={bad}: {bad}: not a JSON list of tile entries")):
        _bench_run("attention", "bench_attention", [f"kernel_configs={bad}"], tmp_path)


def test_tune_kernels_keeps_earlier_tiles_unasked(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tuned_configs.json").write_text("[]")
    with pytest.raises(FileExistsError, match="already holds a tuned_configs.json: give overwrite=true"):
        _bench_run("tune_kernels", "tune_kernels", [], tmp_path)


@pytest.mark.parametrize(
    "args, needle",
    [
        (dict(fit_steps=-1), "fit_steps (fit.steps) must be an integer >= 0, got -1"),
        (dict(max_tokens=0), "max_tokens (fit.max_tokens) must be a positive integer, a non-empty list of them"),
        (dict(max_tokens=[]), "max_tokens (fit.max_tokens) must be a positive integer, a non-empty list of them"),
        (dict(max_tokens=[64, 0]), "(each chain cut at each length) or null, got [64, 0]"),
        (dict(max_tokens="64"), "or null, got '64'"),
        (dict(fit_lr=-1.0), "fit_lr (fit.lr) must be a number > 0, got -1.0"),
        (dict(seed=-3), "seed (fit.seed) must be an integer in [0, 2**32), got -3"),
        pytest.param(
            dict(device="cuda"),
            "device=cuda but CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message"),
        ),
    ],
)
def test_convert_checks_the_fit_before_reading_the_checkpoint(args, needle, tmp_path):
    from pairformer_fb.convert.convert import convert_checkpoint

    with pytest.raises(ValueError, match=re.escape(needle)):
        convert_checkpoint(tmp_path / "absent.pt", tmp_path / "out.pt", **args)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("optimizer.betas=[0.9]", "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got [0.9]"),
        ("data.msa_dir=/nonexistent_msa", "data.msa_dir='/nonexistent_msa' is not a folder"),
        ("model.n_cycle=-3", "model.n_cycle must be an integer >= 1, got -3"),
        ("schedule.warmup_steps=-1", "schedule.warmup_steps must be an integer >= 0, got -1"),
        ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio must be <= 1"),
        ("model.host=boltz", "model.host must be one of protenix, got 'boltz'"),
    ],
)
def test_finetune_checks_its_settings_before_any_work(arg, needle, tmp_path):
    from omegaconf import OmegaConf

    from pairformer_fb.cli import CONFIGS, compose_config
    from pairformer_fb.convert.finetune import finetune

    cfg = compose_config(
        "finetune", ["checkpoint=absent.pt", f"output_dir={tmp_path / 'out'}", arg], config_dir=CONFIGS / "finetune"
    )
    with pytest.raises(ValueError, match=re.escape(needle)):
        finetune(OmegaConf.to_container(cfg, resolve=True))
    assert not (tmp_path / "out").exists()


def test_fuzz_with_the_triton_backend_on_a_cpu_needs_the_interpreter(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz_op.py"), "backend=triton", "device=cpu", "output_dir=out"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert_one_line_error(proc, "backend=triton on the CPU needs Triton's interpreter: set TRITON_INTERPRET=1")
    assert not (tmp_path / "out").exists()
