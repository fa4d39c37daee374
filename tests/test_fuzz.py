"""The op's fuzz suite (pairformer_fb/bench/fuzz.py): seeded random cases against the float64
oracle. CPU: a slice of small cases through the Triton kernels in the interpreter (fp32 / fp16:
the interpreter computes bf16 products wrongly) and through the torch reference. GPU: the
seeded suite at full size (FUZZ_CASES cases, default 120; scripts/fuzz_op.py records a run)."""

import os

import pytest
import torch

from pairformer_fb.bench import fuzz

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()


def _small_cases(n, seed, dtypes):
    return fuzz.draw_cases(n, seed, max_len=40, max_elements=1 << 13, dtypes=dtypes, max_head_dim=40, max_rank=20)


def _assert_all_ok(records):
    bad = [f"#{r['index']} {r['case']}: {r['status']} {r.get('errors')}" for r in records if r["status"] != "ok"]
    assert not bad, "\n".join(bad)


@pytest.mark.interpret
@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 without a GPU")
def test_fuzz_slice_in_the_triton_interpreter():
    _assert_all_ok([fuzz.run_case(c, "cpu", backend="triton") for c in _small_cases(16, 14, ("fp32", "fp16"))])


def test_fuzz_slice_on_the_reference_path():
    _assert_all_ok(
        [fuzz.run_case(c, "cpu", backend="reference") for c in _small_cases(30, 15, ("fp32", "fp16", "bf16"))]
    )


def test_cases_cover_the_edges():
    cases = fuzz.draw_cases(300, 0)
    assert len({c.dtype for c in cases}) == 4 and {c.bias for c in cases} >= set(fuzz.BIAS_PATTERNS)
    assert any(c.Lk == 1 for c in cases) and any(c.fully_masked_rows for c in cases)
    assert any(c.R and c.factor_batch == c.B > 1 for c in cases) and any(c.gate and c.grad for c in cases)
    assert max(c.Lq for c in cases) > 400 and min(c.D for c in cases) < 16 and max(c.D for c in cases) > 120
    assert fuzz.draw_cases(5, 3) == fuzz.draw_cases(5, 3)


def test_oracle_catches_a_wrong_answer():
    case = _small_cases(1, 2, ("fp32",))[0]
    args, kw = fuzz.make_case_inputs(case, "cpu")
    ref = fuzz.float64_oracle(*args, **kw)
    assert fuzz._error(ref * (1 + 1e-3), ref, 1.0) > fuzz.FWD_ULPS * fuzz.UNIT_ROUNDOFF["fp32"]


def test_fully_masked_row_is_uniform_in_the_oracle():
    q, k, v = (torch.randn(1, 1, 3, 8, dtype=torch.float64) for _ in range(3))
    out = fuzz.float64_oracle(q, k, v, key_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(out, v.mean(2, keepdim=True).expand_as(out))


@pytest.mark.gpu
def test_fuzz_on_gpu():
    n = int(os.environ.get("FUZZ_CASES", "120"))
    records = fuzz.run_fuzz(fuzz.draw_cases(n, 0), "cuda", workers=4, progress=False)
    _assert_all_ok(records)


def test_run_records_the_headline(tmp_path):
    cases = _small_cases(5, 16, ("fp16", "fp32"))
    records = fuzz.run_fuzz(cases, "cpu", workers=2, backend="reference", progress=False)
    assert [r["index"] for r in records] == [c.index for c in cases]
    summary = fuzz.write_results(records, tmp_path, {"device": "cpu"}, {"cases": 5})
    doc = __import__("json").loads((tmp_path / "results.json").read_text())
    for key in ("cases", "failures", "worst_error", "first_call_s_max", "first_call_s_median", "environment"):
        assert key in doc, key
    assert summary["cases"] == 5 and summary["failures"] == 0 and (tmp_path / "results.md").exists()


@pytest.mark.parametrize(
    "arg", ["cases=0", "workers=0", "backend=x", "device=gpu", "named=3", "timeout_s=0", "seed=-1"]
)
def test_fuzz_script_rejects_bad_options_in_one_line_before_any_work(arg, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(root / "scripts" / "fuzz_op.py"), arg, f"output_dir={out}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert run.stderr.startswith("fuzz_op: error: " + arg.split("=")[0]) and not out.exists()
