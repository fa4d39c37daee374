"""The diffusion module's attentions (kinds "diffusion" and "atom") against real Protenix modules
(CPU, fp32, random non-zero weights), the bias reuse across calls, and the SVD factors.

* module level: ``FlashBiasDiffusionAttention`` built by the Protenix adapter on a host
  ``AttentionPairBias`` (has_s=True) reproduces it on fresh random inputs: global attention
  (plain and ``enable_efficient_fusion``) with a samples dimension whose bias is shared (passed to
  the op with batch 1, read with stride 0) or per sample; local attention (cross attention,
  queries in blocks of 32, key windows of 128) for atom counts that need padded windows and
  masked keys (N < 32, not a multiple of 32, a multiple); gradients as the host's.
* bias reuse: a hit only for the same z object at the same version; an in-place change of z, a
  new z, a parameter update or a changed input of the scope recomputes it (checked against the
  host on the new values); nothing is kept when gradients are needed. Under
  ``torch.inference_mode`` (inputs without version counters): recomputed at every step by
  default, reused across steps with ``trust_inference_tensors`` (a new object still
  recomputes; the results equal the uncached path's).
* ``svd_factors``: ranks per head from the error budget, the achieved error, the randomised path,
  and the caller's RNG stream left untouched.
* the full tiny Protenix (issue 5's preset, 2 samples x 3 steps): exact kinds "diffusion" +
  "atom" reproduce the coordinates, reuse the bias across steps, and stay exact on a second
  input (no stale bias); unpatch is bit-identical; lowrank (SVD) approaches exact as the rank
  grows.
* the caches' memory bound (``BiasCacheBudget``, ``patch_model(bias_cache_gib=...)``): modules
  sharing a budget keep biases only within it (the first ones), the others recompute at every
  step with outputs bit-identical to unbounded caches and equal to the host's; the bias
  computed in row chunks equals the unchunked one; on the full tiny Protenix every bound (0, a
  part of what the caches would hold, none, auto) gives the same coordinates bit for bit.
"""

import math
import os

import pytest
import torch

os.environ.setdefault("LAYERNORM_TYPE", "torch")
try:
    from protenix.model.modules.transformer import AttentionPairBias
except Exception as e:  # noqa: BLE001
    pytest.skip(f"protenix cannot be imported ({type(e).__name__}: {e})", allow_module_level=True)

from host_models import randomise_
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts.base import Site
from pairformer_fb.hosts.protenix.adapter import make_replacement
from pairformer_fb.modules import diffusion_attention
from pairformer_fb.modules.bias_cache import GIB, BiasCacheBudget, BiasScope, SVDConfig, svd_factors
from pairformer_fb.patching.patching import patched_modules

pytestmark = [
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]

C_A, C_S, C_Z, HEADS = 32, 16, 8, 4
RTOL = 1e-5


def test_weight_edits_through_data_need_clear_weight_caches():
    """An edit through ``.data`` moves no version counter, so the inference caches (the stacked
    projection weights, the cached bias) keep the old weights until clear_weight_caches; in-place
    updates need nothing (test_bias_reuse_is_never_stale)."""
    from pairformer_fb import clear_weight_caches

    host, ours = host_and_ours("diffusion", seed=31)
    n = 7
    a, s, z = rand(2, n, C_A, seed=32), rand(2, n, C_S, seed=33), rand(1, n, n, C_Z, seed=34)
    with torch.no_grad():
        ours(a, s, z)
        for w in (host.linear_nobias_z.weight, host.attention.linear_q.weight):
            w.data.mul_(2)
        assert rel_err(ours(a, s, z), host(a, s, z)) > 1e-3  # stale: the documented limitation
        assert clear_weight_caches(ours) >= 2  # the stacked weights and the bias
        assert rel_err(ours(a, s, z), host(a, s, z)) < RTOL


def host_and_ours(kind="diffusion", mode="exact", seed=1, **kwargs):
    torch.manual_seed(seed)
    host = randomise_(
        AttentionPairBias(has_s=True, n_heads=HEADS, c_a=C_A, c_s=C_S, c_z=C_Z, cross_attention_mode=kind == "atom"),
        seed,
    ).eval()
    site = Site(path="x", parent=None, attr="x", module=host, kind=kind, node=None, stack="diffusion", block=0)
    return host, make_replacement(site, mode=mode, factor_config=None, **kwargs)


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def spy_op(monkeypatch):
    """Records the bias shape / strides the module passes to the op."""
    calls = []
    real = diffusion_attention.flash_bias_attention

    def spy(q, k, v, **kw):
        calls.append({"q": tuple(q.shape), **{n: t for n, t in kw.items() if torch.is_tensor(t)}})
        return real(q, k, v, **kw)

    monkeypatch.setattr(diffusion_attention, "flash_bias_attention", spy)
    return calls


@pytest.mark.parametrize("fusion", [False, True], ids=["plain", "efficient-fusion"])
@pytest.mark.parametrize("z_batch", ["shared", "per-sample"])
def test_global_attention_matches_host(fusion, z_batch, spy_op):
    host, ours = host_and_ours("diffusion", seed=2)
    n, samples = 19, 3
    a, s = rand(samples, n, C_A, seed=3), rand(samples, n, C_S, seed=4)
    zb = 1 if z_batch == "shared" else samples
    z = rand(zb, C_Z, n, n, seed=5) if fusion else rand(zb, n, n, C_Z, seed=5)
    with torch.no_grad():
        ref = host(a, s, z, enable_efficient_fusion=fusion)
        out = ours(a, s, z, enable_efficient_fusion=fusion)
    assert rel_err(out, ref) < RTOL
    (call,) = spy_op
    assert call["q"] == (samples, HEADS, n, C_A // HEADS)
    assert call["bias"].shape == (zb, HEADS, n, n)  # a shared bias reaches the op with batch 1


@pytest.mark.parametrize("n", [5, 37, 64, 100])
def test_local_atom_attention_matches_host(n, spy_op):
    host, ours = host_and_ours("atom", seed=6)
    T = math.ceil(n / 32)
    a, s = rand(2, n, C_A, seed=7), rand(1, n, C_S, seed=8)  # 2 samples, conditioning shared
    z = rand(1, T, 32, 128, C_Z, seed=9)  # the trunked atom-pair rep, shared by the samples
    with torch.no_grad():
        ref = host(a, s, z, n_queries=32, n_keys=128)
        out = ours(a, s, z, n_queries=32, n_keys=128)
    assert out.shape == ref.shape and rel_err(out, ref) < RTOL
    (call,) = spy_op
    # batch = samples, heads = trunks x heads, 32 queries x 128 keys: only the trunks' tiles
    assert call["q"] == (2, T * HEADS, 32, C_A // HEADS) and call["bias"].shape == (1, T * HEADS, 32, 128)


def test_atom_attention_is_always_exact():
    _, ours = host_and_ours("atom", mode="lowrank", svd_config=SVDConfig())
    assert ours.mode == "exact" and ours.flash_bias.factor_network is None


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors through Triton need its interpreter")
@pytest.mark.parametrize("kind", ["diffusion", "atom"])
def test_triton_kernels_in_the_interpreter(kind):
    """The same layouts through the Triton kernels (CPU: Triton's interpreter): strided q / k / v
    views, the shared bias read with stride 0, heads = trunks x heads for the atoms."""
    host, ours = host_and_ours(kind, seed=31, backend="triton")
    n = 40 if kind == "atom" else 20
    a = rand(2, n, C_A, seed=32)
    if kind == "atom":
        s, z, kw = rand(1, n, C_S, seed=33), rand(1, 2, 32, 128, C_Z, seed=34), {"n_queries": 32, "n_keys": 128}
    else:
        s, z, kw = rand(2, n, C_S, seed=33), rand(1, n, n, C_Z, seed=34), {}
    with torch.no_grad():
        assert rel_err(ours(a, s, z, **kw), host(a, s, z, **kw)) < 1e-5


def test_gradients_match_host():
    host, ours = host_and_ours("diffusion", seed=10)
    n = 11
    a, s, z = rand(2, n, C_A, seed=11), rand(2, n, C_S, seed=12), rand(1, n, n, C_Z, seed=13)
    grads = []
    for m in (host, ours):
        m.zero_grad()
        inputs = [t.clone().requires_grad_() for t in (a, s, z)]
        (m(*inputs) * rand(2, n, C_A, seed=14)).sum().backward()
        grads.append([t.grad for t in inputs] + [host.linear_nobias_z.weight.grad.clone()])
    for g_host, g_ours in zip(*grads):
        assert rel_err(g_ours, g_host) < 1e-4
    assert ours.flash_bias.bias_cache.payload is None  # nothing kept while gradients are needed


def test_bias_reuse_is_never_stale():
    host, ours = host_and_ours("diffusion", seed=15)
    cache = ours.flash_bias.bias_cache
    n = 9
    a, s, z = rand(2, n, C_A, seed=16), rand(2, n, C_S, seed=17), rand(1, n, n, C_Z, seed=18)

    def check(z_now):
        with torch.no_grad():
            assert rel_err(ours(a, s, z_now), host(a, s, z_now)) < RTOL

    check(z)
    check(z)
    assert (cache.hits, cache.misses) == (1, 1)  # the same z object: reused
    with torch.no_grad():
        z.mul_(1.5)  # in place: the version counter moves
    check(z)
    assert cache.misses == 2
    check(z.clone())  # equal values, another object: recomputed (identity, not content)
    assert cache.misses == 3
    z2 = rand(1, n, n, C_Z, seed=19)
    check(z2)
    check(z2)
    with torch.no_grad():
        host.linear_nobias_z.weight.add_(0.1)  # a parameter update (shared with ours)
    check(z2)
    with torch.no_grad():
        host.layernorm_z.weight.mul_(0.9)
    check(z2)
    assert (cache.hits, cache.misses) == (2, 6)


def test_bias_reuse_within_a_scope():
    host, ours = host_and_ours("diffusion", seed=20)
    scope = BiasScope()
    ours.flash_bias.scope = scope
    cache = ours.flash_bias.bias_cache
    n = 8
    a, s = rand(1, n, C_A, seed=21), rand(1, n, C_S, seed=22)
    trunk = rand(n, n, C_Z, seed=23)  # what the bias depends on, as the scope sees it

    def step(trunk_now):
        scope.enter([trunk_now, {"flag": True}])
        try:
            z = trunk_now[None] * 2.0  # a new tensor every step, as the host's conditioning makes
            with torch.no_grad():
                assert rel_err(ours(a, s, z), host(a, s, z)) < RTOL
        finally:
            scope.exit()

    for _ in range(3):
        step(trunk)
    assert (cache.hits, cache.misses) == (2, 1)
    with torch.no_grad():
        trunk.add_(1.0)  # the scope's input changed in place: a new generation
    step(trunk)
    step(rand(n, n, C_Z, seed=24))  # another input tensor
    assert (cache.hits, cache.misses) == (2, 3)
    other = rand(n, n, C_Z, seed=25)
    step(other)
    assert cache.payload is not None
    del other  # the inputs of its generation are gone: the cached bias is freed at once
    assert cache.payload is None


@pytest.mark.parametrize("trust", [False, True], ids=["default", "trusted"])
def test_bias_reuse_under_inference_mode(trust):
    host, ours = host_and_ours("diffusion", seed=26)
    scope = BiasScope(trust_inference_tensors=trust)
    ours.flash_bias.scope = scope
    cache = ours.flash_bias.bias_cache
    n, steps = 8, 4
    a, s = rand(2, n, C_A, seed=27), rand(2, n, C_S, seed=28)
    with torch.inference_mode():
        trunk = rand(n, n, C_Z, seed=29)  # an inference tensor: no version counter
    assert trunk.is_inference()
    # the premise of trusting one: outside inference mode it cannot be written in place
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        trunk.add_(1.0)

    def step(trunk_now):
        with torch.inference_mode():
            scope.enter([trunk_now])
            try:
                z = trunk_now[None] * 2.0  # a new tensor every step, as the host's conditioning makes
                out = ours(a, s, z)
                ref = host(a, s, z)
            finally:
                scope.exit()
        assert rel_err(out, ref) < RTOL
        return out

    outs = [step(trunk) for _ in range(steps)]
    expected = (steps - 1, 1) if trust else (0, steps)
    assert (cache.hits, cache.misses) == expected
    assert all(torch.equal(o, outs[0]) for o in outs)  # the cached bias gives the uncached result
    with torch.inference_mode():
        other = trunk.clone()  # equal values, a new object (e.g. the next prediction): recomputed
    step(other)
    assert cache.misses == expected[1] + 1
    step(other)
    assert cache.misses == expected[1] + (1 if trust else 2)

    # outside a scope: the same inference z object is reused only when trusted
    ours.flash_bias.scope = None
    ours.flash_bias.bias_cache.trust_inference_tensors = trust
    with torch.inference_mode():
        z = trunk[None] * 2.0
        before = cache.misses
        first, again = ours(a, s, z), ours(a, s, z)
    assert torch.equal(first, again) and cache.misses == before + (1 if trust else 2)


def test_svd_factors_ranks_and_errors():
    g = torch.Generator().manual_seed(25)
    n = 40
    ranks = (2, 5, 9)
    heads = [torch.randn(n, r, generator=g) @ torch.randn(r, n, generator=g) for r in ranks]
    bias = torch.stack(heads)[None]  # [1, 3, N, N], exact ranks 2, 5, 9
    f = svd_factors(bias, SVDConfig(rel_error=1e-5, max_rank=None))
    assert f.ranks.tolist() == [list(ranks)] and f.rank == 9
    assert f.phi_q.shape == (1, 3, n, 9) and f.phi_k.shape == (1, 3, n, 9)
    assert (f.phi_q[0, 0, :, 2:] == 0).all()  # lower-rank heads are padded with zeros
    assert rel_err(f.phi_q @ f.phi_k.transpose(-1, -2), bias) < 1e-5

    noisy = bias + 0.3 * torch.randn(bias.shape, generator=g)
    budget = 0.5
    f = svd_factors(noisy, SVDConfig(rel_error=budget, max_rank=None))
    approx = f.phi_q @ f.phi_k.transpose(-1, -2)
    for h in range(3):
        err = rel_err(approx[0, h], noisy[0, h])
        assert err <= budget and abs(err - f.rel_errors[0, h].item()) < 1e-5
        u, sv, vh = torch.linalg.svd(noisy[0, h].double())
        r = int(f.ranks[0, h])  # the smallest rank within budget
        lower = ((u[:, : r - 1] * sv[: r - 1]) @ vh[: r - 1]).float()
        assert r == 1 or rel_err(lower, noisy[0, h]) > budget

    state = torch.get_rng_state()
    fr = svd_factors(noisy, SVDConfig(rel_error=0.0, max_rank=4))  # randomised path
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    ff = svd_factors(noisy, SVDConfig(rel_error=0.0, max_rank=None))
    best = ff.phi_q[..., :4] @ ff.phi_k[..., :4].transpose(-1, -2)
    assert fr.rank == 4
    assert rel_err(fr.phi_q @ fr.phi_k.transpose(-1, -2), noisy) < rel_err(best, noisy) * 1.02


def test_bad_inputs_name_the_argument():
    _, ours = host_and_ours("diffusion", seed=26)
    a, s = torch.randn(1, 6, C_A), torch.randn(1, 6, C_S)
    with pytest.raises(ValueError, match="z must be"):
        ours.flash_bias(a, s, torch.randn(1, 6, 7, C_Z))
    with pytest.raises(ValueError, match="s must be"):
        ours.flash_bias(a, torch.randn(1, 5, C_S), torch.randn(1, 6, 6, C_Z))
    with pytest.raises(ValueError, match="lowrank"):
        ours.flash_bias.mode = "lowrank"  # neither a factor network nor an SVD config
    z = torch.randn(1, 6, 6, C_Z)
    with pytest.raises(TypeError, match=r"a has dtype torch.bfloat16, the module's parameters torch.float32"):
        ours.flash_bias(a.bfloat16(), s, z)
    with pytest.raises(ValueError, match=r"a has shape \[0, 6, \d+\]: every dimension"):
        ours.flash_bias(a[:0], s[:0], z[:0])


# ---------------------------------------------------------------------------------------------
# the full tiny Protenix


@pytest.fixture(scope="module")
def protenix_model():
    from protenix.model.protenix import Protenix
    from test_patch_full_models import protenix_features

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    configs = protenix_configs("tiny", {"sample_diffusion.N_sample": 2, "sample_diffusion.N_step": 3}, cpu=True)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    return model, protenix_features(n_token=12, seed=0), protenix_features(n_token=12, seed=1)


def run_coordinates(model, feats):
    from test_patch_full_models import seed_all

    seed_all(0)
    with torch.no_grad():
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    return pred["coordinate"]


def test_protenix_full_model_diffusion_kinds(protenix_model):
    model, feats, other = protenix_model
    ref, ref_other = run_coordinates(model, feats), run_coordinates(model, other)
    assert ref.shape == (2, feats["ref_pos"].shape[0], 3)  # 2 samples, every atom

    report = fb.patch_model(model, kinds=("diffusion", "atom"), stacks=("diffusion", "input"))
    assert {(e.kind, e.stack) for e in report.entries} == {
        ("diffusion", "diffusion"),
        ("atom", "diffusion"),
        ("atom", "input"),
    }
    assert report.params_added == 0
    assert rel_err(run_coordinates(model, feats), ref) < 1e-4
    steps = 3
    for path, m in patched_modules(model).items():
        cache = m.flash_bias.bias_cache
        if path.startswith("diffusion_module"):  # computed at the first step, reused after
            assert (cache.hits, cache.misses) == (steps - 1, 1), path
            assert cache.payload is None, path  # freed with the prediction's trunk tensors
    # a second trunk pass on other inputs: recomputed, still exact (never a stale bias)
    assert rel_err(run_coordinates(model, other), ref_other) < 1e-4
    fb.unpatch_model(model)
    assert not patched_modules(model)
    assert torch.equal(run_coordinates(model, feats), ref)
    assert all(not h for h in (model.diffusion_module._forward_pre_hooks, model.diffusion_module._forward_hooks))

    errors = []
    for rank in (2, 6, 12):  # N_token = 12: rank 12 is the full SVD
        fb.patch_model(model, kinds=("diffusion",), mode="lowrank", svd_config=SVDConfig(rel_error=0.0, max_rank=rank))
        (m,) = patched_modules(model).values()
        errors.append(rel_err(run_coordinates(model, feats), ref))
        assert m.flash_bias.last_svd.rank == rank
        fb.unpatch_model(model)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5, errors
    assert torch.equal(run_coordinates(model, feats), ref)


@pytest.mark.parametrize("kind", ["diffusion", "atom"])
def test_compute_dtype_runs_the_module_in_bf16_and_returns_the_host_dtype(kind, spy_op):
    """compute_dtype=bf16 on an fp32 call: the op gets bf16 q / k / v and the cached bias in bf16;
    the update comes back in fp32, within bf16 rounding of the host's fp32 output."""
    host, ours = host_and_ours(kind, seed=11)
    ours.flash_bias.compute_dtype = torch.bfloat16
    n = 19 if kind == "diffusion" else 70
    a, s = rand(3, n, C_A, seed=12), rand(3, n, C_S, seed=13)
    if kind == "diffusion":
        z, kw = rand(1, n, n, C_Z, seed=14), {}
    else:
        z, kw = rand(1, math.ceil(n / 32), 32, 128, C_Z, seed=14), {"n_queries": 32, "n_keys": 128}
    with torch.no_grad():
        ref = host(a, s, z, **kw)
        out = ours(a, s, z, **kw)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 1e-6 < rel_err(out, ref) < 3e-2  # bf16 rounding: close, and not the fp32 computation
    (call,) = spy_op
    assert call["bias"].dtype == torch.bfloat16


def test_compute_dtype_must_be_a_half_float():
    with pytest.raises(ValueError, match="compute_dtype must be None, torch.bfloat16 or torch.float16"):
        fb.FlashBiasDiffusionAttention(c_a=C_A, c_s=C_S, c_z=C_Z, n_heads=HEADS, compute_dtype=torch.int8)


def test_patch_model_diffusion_dtype(protenix_model):
    """patch_model(diffusion_dtype="bf16") sets the diffusion kinds' compute dtype (not the
    trunk's modules); the prediction stays close to the host's; a bad value is an error."""
    model, feats, _ = protenix_model
    ref = run_coordinates(model, feats)
    with pytest.raises(ValueError, match="diffusion_dtype"):
        fb.patch_model(model, kinds=("diffusion",), diffusion_dtype="bfloat")
    assert not patched_modules(model)
    fb.patch_model(
        model,
        kinds=("triangle", "diffusion", "atom"),
        stacks=("pairformer", "diffusion", "input"),
        diffusion_dtype="bf16",
    )
    try:
        mods = patched_modules(model)
        dtypes = {
            m.flash_bias.compute_dtype if hasattr(m.flash_bias, "compute_dtype") else "none"
            for p, m in mods.items()
            if "tri_att" not in p
        }
        assert dtypes == {torch.bfloat16}
        assert all(not hasattr(m.flash_bias, "compute_dtype") for p, m in mods.items() if "tri_att" in p)
        out = run_coordinates(model, feats)
        assert out.dtype == ref.dtype and 0 < rel_err(out, ref) < 5e-2
    finally:
        fb.unpatch_model(model)


def test_diffusion_benchmark_runs_on_cpu(tmp_path):
    import json

    from bench_configs import bench_config

    from pairformer_fb.bench import diffusion as bench_diffusion

    cfg = bench_config(
        "bench_diffusion",
        tmp_path,
        [
            "n_sample=2",
            "diffusion.sizes=[12]",
            "diffusion.c_a=64",
            "diffusion.c_s=32",
            "diffusion.c_z=16",
            "diffusion.heads=4",
            "atom.sizes=[40]",
            "atom.c_a=32",
            "atom.c_s=32",
            "atom.c_z=8",
            "atom.heads=2",
            "svd.max_rank=4",
            "warmup_ms=1",
            "rep_ms=1",
            "device=cpu",
        ],
    )
    records = bench_diffusion.run(cfg)
    by = {(r.module, r.variant): r for r in records}
    for key in [("diffusion", v) for v in ("stock", "stock_fusion", "exact", "exact_uncached", "lowrank")] + [
        ("atom", v) for v in ("stock", "exact", "exact_uncached")
    ]:
        assert by[key].status == "ok" and by[key].ms > 0, (key, by[key].status)
    for key in [("diffusion", "exact"), ("diffusion", "exact_uncached"), ("atom", "exact")]:
        assert by[key].rel_err < 1e-5, key  # ours computes the stock module's function
    assert by[("diffusion", "exact")].notes["cache_hits"] > 0
    assert by[("diffusion", "lowrank")].notes["rank"] == 4 and by[("diffusion", "lowrank")].rel_err < 0.5
    assert by[("atom", "lowrank")].status.startswith("skipped")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == len(records)
    assert "| diffusion | 12 | 2 | exact |" in (tmp_path / "results.md").read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("kind, n", [("diffusion", 384), ("atom", 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_matches_host(kind, n, dtype, no_tf32):
    """Protenix sizes on CUDA (the Triton kernels): ours against the host module, both in fp32
    (no TF32) or both under bf16 autocast."""
    torch.manual_seed(0)
    heads, c_a, c_s, c_z = (16, 768, 384, 128) if kind == "diffusion" else (4, 128, 128, 16)
    host = (
        randomise_(
            AttentionPairBias(
                has_s=True, n_heads=heads, c_a=c_a, c_s=c_s, c_z=c_z, cross_attention_mode=kind == "atom"
            ),
            27,
        )
        .cuda()
        .eval()
    )
    site = Site(path="x", parent=None, attr="x", module=host, kind=kind, node=None, stack="diffusion", block=0)
    ours = make_replacement(site, mode="exact", factor_config=None)
    a = rand(5, n, c_a, seed=28).cuda()
    if kind == "diffusion":
        s, z = rand(5, n, c_s, seed=29).cuda(), rand(1, n, n, c_z, seed=30).cuda()
        kw = {}
    else:
        s, z = rand(1, n, c_s, seed=29).cuda(), rand(1, math.ceil(n / 32), 32, 128, c_z, seed=30).cuda()
        kw = {"n_queries": 32, "n_keys": 128}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = host(a, s, z, **kw)
        out = ours(a, s, z, **kw)
        again = ours(a, s, z, **kw)  # from the cached bias
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert rel_err(out, ref) < tol and torch.equal(again, out)
    assert ours.flash_bias.bias_cache.hits == 1


def test_svd_factors_under_bf16_autocast():
    """Under autocast (how hosts run bf16 inference) the SVD still runs in fp32: the randomised
    path's QR has no CUDA bf16 kernel. Identical factors to those outside autocast (under bf16
    products they differ by ~6e-3)."""
    g = torch.Generator().manual_seed(3)
    bias = (torch.randn(2, 30, 6, generator=g) @ torch.randn(2, 6, 30, generator=g))[None].to(torch.bfloat16)
    config = SVDConfig(rel_error=0.0, max_rank=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = svd_factors(bias, config)
    outside = svd_factors(bias, config)
    assert inside.phi_q.dtype == torch.bfloat16 and torch.equal(inside.ranks, outside.ranks)
    assert torch.equal(inside.phi_q, outside.phi_q) and torch.equal(inside.phi_k, outside.phi_k)


# ---------------------------------------------------------------------------------------------
# the bias caches' memory bound


def blocks_in_a_scope(k, seed):
    """k (host, ours) diffusion attentions sharing one BiasScope, as the blocks of one diffusion
    transformer."""
    scope, pairs = BiasScope(), [host_and_ours("diffusion", seed=seed + i) for i in range(k)]
    for _, ours in pairs:
        ours.flash_bias.scope = scope
    return scope, pairs


def run_steps(scope, pairs, trunk, a, s, steps, watch=None):
    """``steps`` diffusion steps: each enters the scope with the trunk output and calls every
    block on a new z made from it; returns every block's output of every step (and checks the
    host's). ``watch(caches)`` after every call."""
    outs = []
    for _ in range(steps):
        scope.enter([trunk])
        try:
            z = trunk[None] * 2.0  # a new tensor every step, as the host's conditioning makes
            with torch.no_grad():
                for host, ours in pairs:
                    out = ours(a, s, z)
                    assert rel_err(out, host(a, s, z)) < RTOL
                    outs.append(out)
                    if watch is not None:
                        watch([o.flash_bias.bias_cache for _, o in pairs])
        finally:
            scope.exit()
    return outs


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "row-chunks"])
def test_bias_cache_budget_bounds_what_is_kept_and_stays_exact(chunked, monkeypatch):
    n, steps, k = 11, 3, 3
    a, s, trunk = rand(2, n, C_A, seed=41), rand(2, n, C_S, seed=42), rand(n, n, C_Z, seed=43)
    if chunked:  # 3 query rows of the normalised pair rep per chunk: 4 chunks of 11 rows
        monkeypatch.setattr(diffusion_attention, "PAIR_CHUNK_BYTES", 3 * n * C_Z * 4)
    scope, pairs = blocks_in_a_scope(k, seed=44)
    free = run_steps(scope, pairs, trunk, a, s, steps)  # unbounded caches
    caches = [ours.flash_bias.bias_cache for _, ours in pairs]
    one = caches[0].nbytes
    assert one >= HEADS * n * n * 4 and [c.misses for c in caches] == [1] * k
    for c in caches:
        c.clear()
        c.hits = c.misses = 0
    budget = BiasCacheBudget(limit_gib=1.5 * one / GIB)  # room for one block's bias
    for c in caches:
        c.budget = budget
    scope.invalidate()
    held = []
    bounded = run_steps(scope, pairs, trunk, a, s, steps, watch=lambda cs: held.append(sum(c.nbytes for c in cs)))
    assert all(torch.equal(x, y) for x, y in zip(bounded, free))  # recomputed = cached, bit for bit
    assert max(held) <= budget.limit_bytes(torch.device("cpu")) and max(held) == one
    assert caches[0].payload is not None and caches[0].hits == steps - 1  # the first block keeps its bias
    assert all(c.payload is None and c.misses == steps and c.refused == steps for c in caches[1:])
    assert budget.stats() == {
        "limit_gib": 1.5 * one / GIB,
        "held_gib": one / GIB,
        "peak_held_gib": one / GIB,
        "admitted": 1,
        "refused": (k - 1) * steps,
        "releases": 0,
    }


@pytest.mark.parametrize("z_batch", [1, 3], ids=["shared", "per-sample"])
def test_dense_bias_in_row_chunks_equals_the_whole(z_batch, monkeypatch):
    _, ours = host_and_ours("diffusion", seed=50)
    n = 13
    z = rand(z_batch, n, n, C_Z, seed=51)
    with torch.no_grad():
        whole = ours.flash_bias._dense_bias(z, False)
        monkeypatch.setattr(diffusion_attention, "PAIR_CHUNK_BYTES", 4 * z_batch * n * C_Z * 4)
        assert diffusion_attention.pair_rows_per_chunk(z) == 4
        chunked = ours.flash_bias._dense_bias(z, False)
        again = ours.flash_bias._dense_bias(z, False)
    assert chunked.shape == whole.shape == (z_batch, HEADS, n, n) and chunked.is_contiguous()
    assert rel_err(chunked, whole) < 1e-6 and torch.equal(again, chunked)
    monkeypatch.setattr(diffusion_attention, "PAIR_CHUNK_BYTES", 1)
    assert diffusion_attention.pair_rows_per_chunk(z) == 1  # at least one row


def test_bias_cache_gib_values(monkeypatch):
    assert BiasCacheBudget("auto").limit_bytes(torch.device("cpu")) == math.inf  # auto: no bound on a CPU
    # auto on CUDA: half of free + what the allocator holds unused + what the caches hold + the new payload
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GIB, 141 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 27 * GIB)
    assert BiasCacheBudget("auto").limit_bytes(torch.device("cuda"), pending=GIB) == 0.5 * (10 + 3 + 1) * GIB
    assert BiasCacheBudget(2).limit_bytes(torch.device("cuda")) == 2 * GIB
    assert BiasCacheBudget(None).limit_bytes(torch.device("cpu")) == math.inf
    assert BiasCacheBudget(0.5).limit_bytes(torch.device("cpu")) == GIB / 2
    for bad in (-1, "lots", True, float("nan")):
        with pytest.raises(ValueError, match="bias_cache_gib must be 'auto', null"):
            BiasCacheBudget(bad)


def test_patch_model_bias_cache_gib_keeps_the_coordinates(protenix_model):
    """Any bound gives the coordinates of the unbounded caches bit for bit; 0 keeps nothing, a
    bound below what the caches would hold keeps a part; a bad value is an error naming it."""
    model, feats, _ = protenix_model
    kinds, stacks = ("diffusion", "atom"), ("diffusion", "input")
    with pytest.raises(ValueError, match="bias_cache_gib"):
        fb.patch_model(model, kinds=kinds, stacks=stacks, bias_cache_gib=-0.5)
    assert not patched_modules(model)
    runs = {}
    for limit in (None, 0, "part", "auto"):
        gib = limit if limit != "part" else 0.6 * runs[None][1]["peak_held_gib"]
        report = fb.patch_model(model, kinds=kinds, stacks=stacks, bias_cache_gib=gib)
        try:
            runs[limit] = run_coordinates(model, feats), report.bias_cache.stats()
        finally:
            fb.unpatch_model(model)
    ref, free = runs[None]
    assert free["refused"] == 0 and free["admitted"] > 1 and free["peak_held_gib"] > 0
    for limit in (0, "part", "auto"):
        coords, stats = runs[limit]
        assert torch.equal(coords, ref), limit
        assert stats["peak_held_gib"] <= (stats["limit_gib"] if limit != "auto" else math.inf), limit
    assert runs[0][1]["admitted"] == 0 and runs[0][1]["refused"] > 0
    assert 0 < runs["part"][1]["admitted"] and runs["part"][1]["refused"] > 0
    assert runs["auto"][1] == free | {"limit_gib": "auto"}  # no bound on a CPU


def test_cached_biases_are_released_when_the_confidence_head_starts(protenix_model):
    """patch_model drops the diffusion attentions' cached biases when the host's confidence head
    (the adapter's AFTER_SAMPLING_CLASSES) starts: the head runs with none held, the prediction's
    coordinates are those of caches kept to the end, and unpatch_model removes the hooks."""
    model, feats, _ = protenix_model
    kinds, stacks = ("diffusion", "atom"), ("diffusion", "input")
    heads = [m for m in model.modules() if type(m).__name__ == "ConfidenceHead"]
    assert heads, "the tiny Protenix has a confidence head"
    report = fb.patch_model(model, kinds=kinds, stacks=stacks, bias_cache_gib=None)
    budget = report.bias_cache
    seen = []
    probe = heads[0].register_forward_pre_hook(lambda m, a: seen.append(budget.held_bytes()))  # after ours
    try:
        released = run_coordinates(model, feats)
        stats = budget.stats()
        budget.remove_release_hooks()
        kept = run_coordinates(model, feats)
        kept_stats = budget.stats()
    finally:
        probe.remove()
        fb.unpatch_model(model)
    assert torch.equal(released, kept)
    assert stats["releases"] == 1 and stats["peak_held_gib"] > 0 and stats["held_gib"] == 0
    assert seen[0] == 0 and seen[1] > 0  # released before the head; kept once the hooks are gone
    assert kept_stats["releases"] == 1 and kept_stats["held_gib"] > 0
    assert not heads[0]._forward_pre_hooks
