"""Checkpoint conversion (pairformer_fb.convert.convert, scripts/convert_checkpoint.py) on small
real host models saved in each host's own container: a tiny full Protenix ({"model": ...} with
the DDP "module." prefix), a tiny full OpenFold3 (a plain state dict) and a Boltz-2 Lightning
``.ckpt`` ("state_dict", "hyper_parameters", "ema") of a model holding Boltz-2's trunk Pairformer
(the full Boltz2 module needs pytorch_lightning). Each is converted, reloaded into a patched model
(``load_converted`` and the host's own ``load_state_dict(strict=True)``) and compared with the
host; stripped back and compared bit for bit; and every bad input is tried.

The factor fitting is checked against its own pieces: the modules' ``bias_target`` against the
"distill" mode's loss, the reported errors against a recomputation on the same samples, and the
fitted error against that of the random initialisation and the rank-R SVD floor.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from host_models import randomise_
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.convert.checkpoint import CheckpointError, file_sha256
from pairformer_fb.convert.convert import convert_checkpoint, load_converted
from pairformer_fb.convert.factor_init import approximation_error, capture_bias_targets
from pairformer_fb.convert.samples import last_chain_share, read_fasta_sequences, seed_all
from pairformer_fb.hosts.openfold3.featurize import synthetic_features
from pairformer_fb.hosts.protenix.featurize import sequence_features
from pairformer_fb.modules import (
    FactorConfig,
    FlashBiasAttentionPairBias,
    FlashBiasTriangleAttention,
)
from pairformer_fb.modules.factor_network import bias_approximation_loss
from pairformer_fb.patching.patching import patched_modules

pytestmark = [
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [ROOT / "data_samples" / "1crn.fasta"]
CONFIG = FactorConfig(rank=8, width=32, depth=1)
FAST = {"samples": SAMPLE, "max_tokens": 12, "fit_steps": 30, "progress": False, "factor_config": CONFIG}
EXACT_RTOL = 1e-4


def need(host):
    try:
        if host == "protenix":
            import protenix.model.protenix  # noqa: F401
        elif host == "openfold3":
            import openfold3.projects.of3_all_atom.model  # noqa: F401
        else:
            import boltz.model.layers.pairformer  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{host} cannot be imported: {type(e).__name__}: {e}")


def keys_and_tensors_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_containers_equal(a, b, where="container"):
    """Nested containers with the same keys, equal tensors and equal plain values."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_containers_equal(a[k], b[k], f"{where}.{k}")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------------------------------
# the fitting target


@pytest.mark.parametrize("node,ending_bias", [("starting", None), ("ending", "transposed"), ("ending", "untransposed")])
def test_bias_target_is_what_distill_compares_against(node, ending_bias):
    torch.manual_seed(0)
    m = randomise_(
        FlashBiasTriangleAttention(16, 2, 8, node=node, ending_bias=ending_bias, factor_config=CONFIG, mode="distill")
    )
    z = torch.randn(2, 7, 7, 16)
    mask = torch.rand(2, 7, 7) > 0.2
    _, loss = m(z, mask)
    pair, pair_mask, bias = m.bias_target(z, mask)
    assert torch.allclose(bias_approximation_loss(*m.factor_network(pair, pair_mask), bias, pair_mask), loss)
    # and the factor network's split into features + MLPs is its forward
    fq, fk = m.factor_network.features(pair, pair_mask)
    for a, b in zip(m.factor_network.factors_from_features(fq, fk), m.factor_network(pair, pair_mask)):
        assert torch.equal(a, b)

    s = FlashBiasAttentionPairBias(c_s=24, c_z=16, n_heads=4, factor_config=CONFIG, mode="distill")
    randomise_(s)
    tokens = torch.rand(2, 7) > 0.3
    _, loss = s(torch.randn(2, 7, 24), z, tokens)
    pair, pair_mask, bias = s.bias_target(torch.randn(2, 7, 24), z, tokens)
    assert torch.allclose(bias_approximation_loss(*s.factor_network(pair, pair_mask), bias, pair_mask), loss)


# ---------------------------------------------------------------------------------------------
# Protenix: tiny full model, {"model": {"module." + key: ...}, "optimizer": ..., "step": ...}


def protenix_model(seed=0):
    from pairformer_fb.hosts.protenix.presets import build_protenix

    torch.manual_seed(seed)
    return randomise_(build_protenix("tiny")[0], seed=seed).eval()


def protenix_run(model, n=10):
    """Trunk (s, z) and the coordinates of one seeded inference run."""
    feats = sequence_features("MKTAYIAKQRQISFVKSHFS"[:n], seed=3)
    trunk = {}
    h = model.pairformer_stack.register_forward_hook(lambda mod, a, out: trunk.update(s=out[0], z=out[1]))
    seed_all(0)
    with torch.no_grad():
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    h.remove()
    return {"s": trunk["s"], "z": trunk["z"], "coordinate": pred["coordinate"], "plddt": pred["plddt"]}


def save_protenix(model, path):
    container = {
        "model": {"module." + k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "step": 7,
    }
    torch.save(container, path)
    return container


def test_protenix_exact_conversion_reloads_and_strips_bit_identically(tmp_path):
    need("protenix")
    host = protenix_model()
    ref = protenix_run(host)
    src = tmp_path / "protenix.pt"
    original = save_protenix(host, src)

    out = tmp_path / "protenix_fb.pt"
    report = convert_checkpoint(src, out, model="tiny", mode="exact", progress=False)
    assert report.host == "protenix" and not report.fits and report.keys_added == 0 and len(report.modules) == 6
    converted = torch.load(out, weights_only=True)
    meta = converted.pop("pairformer_fb")
    assert_containers_equal(converted, original)  # exact mode adds no key
    assert meta["host"] == "protenix" and {m["mode"] for m in meta["modules"].values()} == {"exact"}

    model = protenix_model(seed=5)  # other weights: all of them come from the file
    patch = load_converted(out, model)
    assert len(patch) == 6 and all(e.mode == "exact" for e in patch.entries)
    got = protenix_run(model)
    for k, v in ref.items():
        assert rel_err(got[k], v) <= EXACT_RTOL, k
    # the host's own patched model gives bit-identical outputs
    fb.patch_model(host, mode="exact")
    for k, v in protenix_run(host).items():
        assert torch.equal(got[k], v), k


def test_protenix_lowrank_conversion(tmp_path):
    need("protenix")
    host = protenix_model()
    src = tmp_path / "protenix.pt"
    original = save_protenix(host, src)
    ref = protenix_run(host)

    out = tmp_path / "protenix_fb.pt"
    report = convert_checkpoint(src, out, model="tiny", mode="lowrank", **FAST)
    converted = torch.load(out, weights_only=True)
    meta = converted["pairformer_fb"]
    sd = converted["model"]
    # the original keys and tensors unchanged, the factor networks added under the module paths
    assert {k: sd[k] for k in original["model"]}.keys() == original["model"].keys()
    keys_and_tensors_equal({k: sd[k] for k in original["model"]}, original["model"])
    added = [k for k in sd if k not in original["model"]]
    assert len(added) == report.keys_added > 0
    assert all(k.startswith("module.pairformer_stack.blocks.") and ".factor_network." in k for k in added)
    assert converted["step"] == 7 and converted["optimizer"] == original["optimizer"]
    # metadata
    assert meta["host"] == "protenix" and meta["host_version"] and meta["pairformer_fb_version"] == fb.__version__
    assert meta["source"]["sha256"] == file_sha256(src) and meta["factor_config"]["rank"] == CONFIG.rank
    assert set(meta["modules"]) == {f.path for f in report.fits} and len(meta["modules"]) == 6
    assert all(m["mode"] == "lowrank" and m["rank"] == CONFIG.rank for m in meta["modules"].values())
    assert "created_utc" in meta and meta["model_preset"] == "tiny"
    # the report: the fit is far better than the random initialisation, and no better than the SVD floor
    for f in report.fits:
        assert f.error < 0.25 * f.init_error and f.error <= f.lstsq_error + 1e-6 and f.error >= f.svd_floor - 1e-4, f
    saved = json.loads((tmp_path / "protenix_fb.pt.report.json").read_text())
    assert [f["path"] for f in saved["fits"]] == [f.path for f in report.fits]
    assert "| module |" in (tmp_path / "protenix_fb.pt.report.md").read_text()

    # the host's own loader: patch as recorded, then load_state_dict(strict=True)
    model = protenix_model(seed=5)
    fb.patch_model(model, mode="lowrank", factor_config=CONFIG)
    model.load_state_dict({k[len("module.") :]: v for k, v in sd.items()}, strict=True)
    # load_converted restores the same model
    again = protenix_model(seed=6)
    load_converted(out, again)
    keys_and_tensors_equal(again.state_dict(), model.state_dict())
    # the reported errors are what the loaded factors reach on the same samples
    sequences = read_fasta_sequences(SAMPLE, 12)
    from pairformer_fb.convert.samples import run_samples

    records = capture_bias_targets(again, lambda m: run_samples(m, "protenix", sequences, progress=False))
    wrappers = patched_modules(again)
    for f in report.fits:
        with torch.no_grad():
            err = float(approximation_error(wrappers[f.path].flash_bias.factor_network, records[f.path]))
        assert abs(err - f.error) <= 1e-4 * max(1.0, f.error), (f.path, err, f.error)
    # lowrank outputs: finite, and the fitted factors are closer to the exact trunk than random ones
    low = protenix_run(again)
    assert all(torch.isfinite(v).all() for v in low.values())
    rand = protenix_model(seed=5)
    fb.patch_model(rand, mode="lowrank", factor_config=CONFIG)
    rand.load_state_dict({k[len("module.") :]: v for k, v in original["model"].items()}, strict=False)
    assert rel_err(low["z"], ref["z"]) < rel_err(protenix_run(rand)["z"], ref["z"])

    # strip: the plain host checkpoint again, bit-identical outputs in the unpatched host
    plain = tmp_path / "protenix_plain.pt"
    report = convert_checkpoint(out, plain, strip=True, progress=False)
    assert report.keys_removed == len(added)
    assert_containers_equal(torch.load(plain, weights_only=True), original)
    fresh = protenix_model(seed=7)
    fresh.load_state_dict({k[len("module.") :]: v for k, v in torch.load(plain)["model"].items()}, strict=True)
    for k, v in protenix_run(fresh).items():
        assert torch.equal(v, ref[k]), k


# ---------------------------------------------------------------------------------------------
# Boltz-2: Lightning .ckpt of a model holding the trunk Pairformer under its Boltz2 name

BOLTZ_HPARAMS = {
    "token_s": 32,
    "token_z": 16,
    "pairformer_args": {
        "num_blocks": 2,
        "num_heads": 4,
        "dropout": 0.0,
        "pairwise_head_width": 8,
        "pairwise_num_heads": 2,
        "v2": True,
    },
}


def boltz_model(seed=0):
    from pairformer_fb.hosts.boltz.presets import build_boltz_trunk

    torch.manual_seed(seed)
    model = nn.Module()
    model.pairformer_module = build_boltz_trunk(BOLTZ_HPARAMS)
    model.distogram_module = nn.Linear(16, 8)
    return randomise_(model, seed=seed).eval()


def boltz_run(trunk, n=11):
    g = torch.Generator().manual_seed(2)
    s, z = torch.randn(1, n, 32, generator=g), torch.randn(1, n, n, 16, generator=g)
    mask = torch.ones(1, n)
    mask[0, -2:] = 0
    with torch.no_grad():
        return trunk(s, z, mask, mask[:, :, None] * mask[:, None, :])


def test_boltz_lightning_checkpoint(tmp_path):
    need("boltz")
    host = boltz_model()
    sd = {k: v.clone() for k, v in host.state_dict().items()}
    original = {
        "state_dict": sd,
        "hyper_parameters": BOLTZ_HPARAMS,
        "epoch": 3,
        "ema": {"cur_step": 5, "ema_weights": {k: v * 0.5 for k, v in sd.items()}},
    }
    src = tmp_path / "boltz2.ckpt"
    torch.save(original, src)
    ref_s, ref_z = boltz_run(host.pairformer_module)

    out = tmp_path / "boltz2_fb.ckpt"
    two = [*SAMPLE, ROOT / "data_samples" / "1ubq.fasta"]
    report = convert_checkpoint(src, out, mode="lowrank", **{**FAST, "samples": two})  # model: the "trunk" preset
    assert report.model == "trunk" and report.model_prefix == "pairformer_module." and len(report.fits) == 6
    assert "trunk stack" in report.sample_run
    # fitted on 1crn, 1ubq held out (ridge and early stopping chosen on it); the stack runs on Gaussian
    # (s, z), whose biases share little structure from sample to sample: only better than random
    for f in report.fits:
        assert f.n_samples == 1 and f.error < f.init_error and f.heldout_error < f.init_error, f
    converted = torch.load(out, weights_only=True)
    for where in (converted["state_dict"], converted["ema"]["ema_weights"]):  # the EMA weights get them too
        added = [k for k in where if k not in sd]
        assert len(added) == report.keys_added and all(k.startswith("pairformer_module.layers.") for k in added)
    keys_and_tensors_equal({k: converted["state_dict"][k] for k in sd}, sd)
    assert converted["hyper_parameters"] == BOLTZ_HPARAMS and converted["ema"]["cur_step"] == 5

    # into the full model (keys as in the file) and into the bare trunk (prefix taken off): the same
    full = boltz_model(seed=4)
    load_converted(out, full)
    trunk = boltz_model(seed=5).pairformer_module
    load_converted(out, trunk)
    keys_and_tensors_equal(trunk.state_dict(), full.pairformer_module.state_dict())
    for w in patched_modules(trunk).values():
        w.mode = "exact"
    s, z = boltz_run(trunk)
    assert rel_err(s, ref_s) <= EXACT_RTOL and rel_err(z, ref_z) <= EXACT_RTOL

    plain = tmp_path / "boltz2_plain.ckpt"
    convert_checkpoint(out, plain, strip=True, progress=False)
    assert_containers_equal(torch.load(plain, weights_only=True), original)


# ---------------------------------------------------------------------------------------------
# OpenFold3: tiny full model, plain state dict


def openfold3_model(seed=0):
    from pairformer_fb.hosts.openfold3.presets import build_openfold3

    torch.manual_seed(seed)
    return randomise_(build_openfold3("tiny"), seed=seed).eval()


def openfold3_run(model):
    batch = synthetic_features("MKTAYIAKQR", seed=1)
    seed_all(0)
    with torch.no_grad():
        _, out = model({k: v.clone() for k, v in batch.items()})
    return {k: out[k] for k in ("zij_trunk", "si_trunk", "atom_positions_predicted", "plddt_logits")}


def test_openfold3_plain_state_dict(tmp_path):
    need("openfold3")
    host = openfold3_model()
    ref = openfold3_run(host)
    original = {k: v.clone() for k, v in host.state_dict().items()}
    src = tmp_path / "of3.pt"
    torch.save(original, src)

    out = tmp_path / "of3_fb.pt"
    report = convert_checkpoint(src, out, model="tiny", mode={"lowrank": [1], "exact": ...}, **FAST)
    assert {m["mode"] for m in report.modules.values()} == {"lowrank", "exact"} and len(report.fits) == 3
    assert "full OpenFold3" in report.sample_run
    for f in report.fits:
        assert f.error < 0.25 * f.init_error, f
    converted = torch.load(out, weights_only=True)
    assert converted["pairformer_fb"]["host"] == "openfold3"
    keys_and_tensors_equal({k: converted[k] for k in original}, original)

    model = openfold3_model(seed=3)
    patch = load_converted(out, model)
    assert [e.mode for e in patch.entries] == [report.modules[e.path]["mode"] for e in patch.entries]
    for w in patched_modules(model).values():
        w.mode = "exact"
    for k, v in openfold3_run(model).items():
        assert rel_err(v, ref[k]) <= EXACT_RTOL, k

    plain = tmp_path / "of3_plain.pt"
    convert_checkpoint(out, plain, strip=True, progress=False)
    assert_containers_equal(torch.load(plain, weights_only=True), original)
    fresh = openfold3_model(seed=4)
    fresh.load_state_dict(torch.load(plain), strict=True)
    for k, v in openfold3_run(fresh).items():
        assert torch.equal(v, ref[k]), k


# ---------------------------------------------------------------------------------------------
# bad input: a clear error, nothing written


def protenix_standin(seed=0):
    from protenix.model.modules.pairformer import PairformerStack

    torch.manual_seed(seed)
    model = nn.Module()
    model.pairformer_stack = PairformerStack(n_blocks=2, n_heads=4, c_z=32, c_s=64)
    model.distogram_head = nn.Linear(32, 8)
    return randomise_(model, seed=seed).eval()


def test_bad_inputs_name_what_is_wrong_and_write_nothing(tmp_path):
    need("protenix")
    need("boltz")
    src = tmp_path / "p.pt"
    container = save_protenix(protenix_standin(), src)
    out = tmp_path / "out.pt"
    kwargs = {"model": protenix_standin(seed=1), "mode": "exact", "progress": False}

    def refused(path, match, **kw):
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises((CheckpointError, ValueError, FileNotFoundError), match=match):
            convert_checkpoint(path, kw.pop("output", out), **{**kwargs, **kw})
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    refused(truncated, "truncated or corrupt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    refused(corrupt, "truncated or corrupt")
    refused(tmp_path / "missing.pt", "not found")
    refused(src, "is the input checkpoint", output=src)
    # another host's checkpoint, forced or not
    boltz_src = tmp_path / "b.ckpt"
    torch.save({"state_dict": boltz_model().state_dict(), "hyper_parameters": BOLTZ_HPARAMS}, boltz_src)
    refused(boltz_src, "host='protenix' but the checkpoint's keys are 'boltz'", host="protenix")
    refused(boltz_src, "does not fit the Module model")  # auto: Boltz keys into a Protenix model
    # a missing and a mis-shaped key, named
    sd = dict(container["model"])
    gone = "module.pairformer_stack.blocks.1.tri_att_end.linear.weight"
    del sd[gone]
    torch.save({"model": sd}, tmp_path / "missing_key.pt")
    refused(tmp_path / "missing_key.pt", "missing from the checkpoint.*" + gone[len("module.") :].replace(".", r"\."))
    sd = dict(container["model"])
    bad = "module.pairformer_stack.blocks.0.attention_pair_bias.linear_nobias_z.weight"
    sd[bad] = torch.zeros(3, 32)
    torch.save({"model": sd}, tmp_path / "bad_shape.pt")
    refused(tmp_path / "bad_shape.pt", r"mis-shaped.*linear_nobias_z\.weight: \(3, 32\) in the checkpoint, \(4, 32\)")
    # strip of a host checkpoint; conversion of a converted one
    refused(src, "not a converted one", strip=True)
    convert_checkpoint(src, tmp_path / "conv.pt", **kwargs)
    refused(tmp_path / "conv.pt", "already converted")
    # load_converted of a plain checkpoint, and into another model
    with pytest.raises(CheckpointError, match="not a converted checkpoint"):
        load_converted(src, protenix_standin())
    other = nn.Module()
    from protenix.model.modules.pairformer import PairformerStack

    other.pairformer_stack = PairformerStack(n_blocks=1, n_heads=4, c_z=32, c_s=64)
    with pytest.raises(CheckpointError, match="differ from the recorded ones"):
        load_converted(tmp_path / "conv.pt", other)
    assert not patched_modules(other)  # left unpatched


# ---------------------------------------------------------------------------------------------
# the Hydra script


def test_script_converts_tiny_protenix_and_fails_cleanly(tmp_path):
    need("protenix")
    src = tmp_path / "tiny.pt"
    save_protenix(protenix_model(), src)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = str(ROOT / "scripts" / "convert_checkpoint.py")
    out = tmp_path / "tiny_fb.pt"
    args = [
        sys.executable,
        script,
        f"input={src}",
        f"output={out}",
        "model=tiny",
        "patch.rank=4",
        "patch.factor_width=16",
        "patch.factor_depth=1",
        f"fit.samples=[{SAMPLE[0]}]",
        "fit.max_tokens=[10,12]",
        "fit.steps=10",
        "progress=false",
    ]

    def run(argv):
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)

    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| `pairformer_stack.blocks.1.attention_pair_bias` | single | 4 |" in done.stdout
    assert out.exists() and (tmp_path / "tiny_fb.pt.report.md").exists()
    assert torch.load(out, weights_only=True)["pairformer_fb"]["factor_config"]["width"] == 16
    samples = json.loads((tmp_path / "tiny_fb.pt.report.json").read_text())["samples"]
    assert samples == ["1crn:1CRN (10 residues)", "1crn:1CRN (12 residues)"], samples

    one = run([*args[:3], f"output={tmp_path / 'one.pt'}", "fit.max_tokens=10"])
    assert one.returncode == 2, one.stderr
    assert 'fit.max_tokens must be a list, e.g. "fit.max_tokens=[a,b]"' in one.stderr, one.stderr
    bad = run(args[:2] + [f"input={out}", f"output={out}"])
    assert bad.returncode != 0 and "refusing to overwrite" in bad.stderr


def test_sample_chains_are_cut_at_each_length_without_repeats():
    """Every chain cut at each length (shortest first, chain by chain); a cut equal to an earlier
    one is left out: 7wux_a2b2 is two copies of 7wux_a's and 7wux_b's chains, and 1crn (46
    residues) is whole at 64 and 128 alike."""
    files = [ROOT / "data_samples" / f for f in ("1crn.fasta", "7wux_a.fasta", "7wux_a2b2.fasta", "7wux_b.fasta")]
    got = [(name, len(seq)) for name, seq in read_fasta_sequences(files, [64, 32, 128, 64])]
    assert got == [
        ("1crn:1CRN", 32),
        ("1crn:1CRN", 46),
        ("7wux_a:7WUX_A", 32),
        ("7wux_a:7WUX_A", 64),
        ("7wux_a:7WUX_A", 128),
        ("7wux_a2b2:7WUX_B1", 32),
        ("7wux_a2b2:7WUX_B1", 64),
        ("7wux_a2b2:7WUX_B1", 128),
    ], got
    whole = read_fasta_sequences(files, None)
    assert [n for n, _ in whole] == ["1crn:1CRN", "7wux_a:7WUX_A", "7wux_a2b2:7WUX_B1"]
    assert read_fasta_sequences(files[:1], 12) == [("1crn:1CRN", whole[0][1][:12])]
    sequences = read_fasta_sequences(files, [32, 64, 128])
    assert last_chain_share(sequences) == 3 / 8


@pytest.mark.parametrize(
    "n_calls, holdout, held",
    [(8, True, 1), (10, True, 2), (1, True, 0), (8, False, 0), (16, 3 / 8, 6), (4, 0.1, 1), (2, 0.9, 1)],
)
def test_held_out_calls(n_calls, holdout, held):
    from pairformer_fb.convert.factor_init import _held_out_calls

    assert _held_out_calls(n_calls, holdout) == held


@pytest.mark.parametrize("holdout", [1.0, 0.0, 2, "yes", None])
def test_fit_refuses_a_bad_holdout_before_running(holdout):
    from pairformer_fb.convert.factor_init import fit_patched_model

    ran = []
    with pytest.raises(
        ValueError, match=re.escape(f"holdout must be true, false or a fraction in (0, 1), got {holdout!r}")
    ):
        fit_patched_model(torch.nn.Linear(1, 1), ran.append, holdout=holdout)
    assert not ran
