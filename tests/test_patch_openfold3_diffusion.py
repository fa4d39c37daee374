"""OpenFold3's diffusion transformer attention (kind "diffusion") and atom transformer attention
(kind "atom") against real OpenFold3 modules (CPU, fp32, random non-zero weights).

* module level: ``FlashBiasDiffusionAttention`` built by the OpenFold3 adapter on a host
  ``DiffusionAttentionPairBias`` (AdaLN, no pair norm of its own, token key mask with 1e9,
  ``linear_ada_out`` gate) reproduces it on fresh random inputs, with a samples dimension whose
  pair rep is shared or per sample and with padded (masked) tokens.
* module level, kind "atom": ``FlashBiasDiffusionAttention(windows="shifted")`` built on a host
  ``CrossAttentionPairBias`` reproduces it on every valid atom, with padded atoms (a different
  number per structure: the key windows shift per element), fewer atoms than a key window, and
  several windows; the op gets only the windows' bias tiles; the bias is cached for the same
  (z, mask) and recomputed for a new mask.
* GPU (marked gpu, skipped without CUDA): OpenFold3's sizes on the Triton kernels, fp32 and bf16.
* the tiny full OpenFold3 (``build_openfold3("tiny")`` with 3 diffusion steps x 2 samples): kind
  "diffusion" reproduces the unpatched atom positions, the bias is computed at the first step and
  reused for the others, a second input is still exact (no stale bias), unpatch is
  bit-identical and removes the hooks, lowrank (SVD factors of the fixed bias) approaches exact
  as the rank grows; kind "atom" (encoder / decoder of the diffusion module, the input
  embedder's encoder) likewise: exact, the bias computed once per trunk pass, unpatch
  bit-identical. Under torch.inference_mode: recomputed every step by default, computed once per
  trunk pass with ``trust_inference_tensors=True``; exact either way.
"""

import pytest
import torch

try:
    from openfold3.core.model.layers.attention_pair_bias import CrossAttentionPairBias, DiffusionAttentionPairBias

    from pairformer_fb.hosts.openfold3.featurize import synthetic_features
    from pairformer_fb.hosts.openfold3.presets import openfold3_config
except Exception as e:  # noqa: BLE001
    pytest.skip(f"openfold3 cannot be imported ({type(e).__name__}: {e})", allow_module_level=True)

from host_models import randomise_
from naive import rel_err
from test_patch_full_models import seed_all

import pairformer_fb as fb
from pairformer_fb.hosts import UnsupportedModelError
from pairformer_fb.hosts.base import Site
from pairformer_fb.hosts.openfold3.adapter import make_replacement
from pairformer_fb.modules import diffusion_attention
from pairformer_fb.modules.bias_cache import SVDConfig
from pairformer_fb.patching.patching import patched_modules

pytestmark = [
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]

C_A, C_S, C_Z, HEADS, HEAD_DIM = 32, 16, 8, 4, 6
RTOL = 1e-5


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def host_and_ours(seed=1, mode="exact", **kwargs):
    torch.manual_seed(seed)
    host = randomise_(
        DiffusionAttentionPairBias(c_q=C_A, c_k=C_A, c_v=C_A, c_s=C_S, c_z=C_Z, c_hidden=HEAD_DIM, no_heads=HEADS), seed
    ).eval()
    site = Site(path="x", parent=None, attr="x", module=host, kind="diffusion", node=None, stack="diffusion", block=0)
    return host, make_replacement(site, mode=mode, factor_config=None, **kwargs)


@pytest.mark.parametrize("z_batch", ["shared", "per-sample"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "token-mask"])
def test_diffusion_attention_matches_host(z_batch, masked, monkeypatch):
    host, ours = host_and_ours(seed=2)
    assert all(p.abs().sum() > 0 for p in host.parameters())  # random, non-zero (no zero-init)
    calls = []
    real = diffusion_attention.flash_bias_attention
    monkeypatch.setattr(
        diffusion_attention, "flash_bias_attention", lambda q, k, v, **kw: calls.append(kw) or real(q, k, v, **kw)
    )
    batch, samples, n = 1, 3, 13
    a, s = rand(batch, samples, n, C_A, seed=3), rand(batch, samples, n, C_S, seed=4)
    zb = 1 if z_batch == "shared" else samples
    z = rand(batch, zb, n, n, C_Z, seed=5)
    mask = None
    if masked:  # the host's token mask: float 0 / 1, [batch, 1, N] (broadcast over the samples)
        mask = torch.ones(batch, 1, n)
        mask[..., -4:] = 0
    with torch.no_grad():
        ref = host(a=a, z=z, s=s, mask=mask)
        out = ours(a=a, z=z, s=s, mask=mask)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < RTOL
    (call,) = calls
    assert call["bias"].shape == (zb, HEADS, n, n)  # a shared bias reaches the op with batch 1
    assert (call["key_mask"] is None) == (not masked)
    if masked:
        # the mask really matters: without it the output differs
        with torch.no_grad():
            assert rel_err(ours(a=a, z=z, s=s), ref) > 1e-3


def test_bad_key_mask_names_the_argument():
    _, ours = host_and_ours(seed=6)
    a, s, z = rand(1, 5, C_A, seed=1), rand(1, 5, C_S, seed=2), rand(1, 5, 5, C_Z, seed=3)
    with pytest.raises(ValueError, match="key_mask must be"):
        ours(a=a, z=z, s=s, mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="key_mask must be"):  # batch dims that do not broadcast to a's
        ours(a=a, z=z, s=s, mask=torch.ones(3, 5))


# ---------------------------------------------------------------------------------------------
# kind "atom": the atom transformer's CrossAttentionPairBias

NQ, NK = 32, 128


def atom_host_and_ours(seed=11):
    torch.manual_seed(seed)
    host = randomise_(
        CrossAttentionPairBias(
            c_q=C_A, c_k=C_A, c_v=C_A, c_s=C_S, c_z=C_Z, c_hidden=HEAD_DIM, no_heads=HEADS, n_query=NQ, n_key=NK
        ),
        seed,
    ).eval()
    site = Site(path="x", parent=None, attr="x", module=host, kind="atom", node=None, stack="diffusion", block=0)
    return host, make_replacement(site, mode="lowrank", factor_config=None)  # "atom" runs exact anyway


def atom_inputs(n, n_valid, samples=3, seed=0):
    """a [B, samples, n, c_a] per sample, s and z [B, 1, ...] shared by the samples, the float
    0 / 1 atom mask [B, 1, n] with the first n_valid[b] atoms of structure b valid."""
    batch, T = len(n_valid), -(-n // NQ)
    a = rand(batch, samples, n, C_A, seed=seed)
    s = rand(batch, 1, n, C_S, seed=seed + 1)
    z = rand(batch, 1, T, NQ, NK, C_Z, seed=seed + 2)
    mask = torch.zeros(batch, 1, n)
    for b, v in enumerate(n_valid):
        mask[b, :, :v] = 1
    return a, s, z, mask


@pytest.mark.parametrize(
    "n, n_valid",
    [
        (83, (83,)),  # fewer atoms than a key window: the windows overhang, invalid slots masked
        (83, (70, 50)),  # padded atoms, a different number per structure: the windows shift per element
        (300, (300, 260)),  # several windows; the last ones shifted left to end at the last valid atom
        (300, (300, 97)),  # whole query blocks of padding
        (20, (20, 12)),  # a single, partly empty query block
    ],
)
def test_atom_attention_matches_host(n, n_valid, monkeypatch):
    host, ours = atom_host_and_ours()
    assert all(p.abs().sum() > 0 for p in host.parameters())  # random, non-zero (no zero-init)
    assert ours.mode == "exact" and ours.flash_bias.windows == "shifted"
    calls = []
    real = diffusion_attention.flash_bias_attention
    monkeypatch.setattr(
        diffusion_attention, "flash_bias_attention", lambda q, k, v, **kw: calls.append(kw) or real(q, k, v, **kw)
    )
    a, s, z, mask = atom_inputs(n, n_valid)
    with torch.no_grad():
        ref = host(a=a, z=z, s=s, mask=mask)
        out = ours(a=a, z=z, s=s, mask=mask)
    assert out.shape == ref.shape
    # every valid atom (the rows of padding atoms are the host's fp32 rounding of -1e9 + logits,
    # read by nothing: see the adapter's docstring)
    valid = mask.expand(a.shape[:-1]).bool()
    assert rel_err(out[valid], ref[valid]) < RTOL
    assert torch.isfinite(out).all()
    # only the windows' bias tiles reach the op: [1 (shared, stride 0) or batch x samples,
    # n_blocks * heads, 32, 128]
    (call,) = calls
    T = -(-n // NQ)
    assert call["bias"].shape == (1 if len(n_valid) == 1 else a.shape[:-2].numel(), T * HEADS, NQ, NK)
    if min(n_valid) < n:
        # the mask really matters: without it the valid atoms' outputs differ
        with torch.no_grad():
            assert rel_err(ours(a=a, z=z, s=s)[valid], ref[valid]) > 1e-3


def test_atom_attention_without_mask_and_bad_mask():
    host, ours = atom_host_and_ours(seed=12)
    a, s, z, _ = atom_inputs(150, (150,), samples=1, seed=5)  # (the host needs s with a's batch dims then)
    with torch.no_grad():
        assert rel_err(ours(a=a, z=z, s=s), host(a=a, z=z, s=s)) < RTOL  # mask None: all atoms valid
        with pytest.raises(ValueError, match="atom_mask must be"):
            ours(a=a, z=z, s=s, mask=torch.ones(1, 1, 149))
    # the options name themselves; an atom mask only where it means something
    with pytest.raises(ValueError, match="windows must be one of"):
        diffusion_attention.FlashBiasDiffusionAttention(C_A, C_S, C_Z, HEADS, windows="sliding")
    with pytest.raises(ValueError, match="kv_from_input needs cross_attention"):
        diffusion_attention.FlashBiasDiffusionAttention(C_A, C_S, C_Z, HEADS, kv_from_input=True)
    zg = rand(1, 1, 150, 150, C_Z, seed=8)
    with pytest.raises(ValueError, match="atom_mask applies to local attention"):
        ours.flash_bias(a, s, zg, atom_mask=torch.ones(1, 1, 150))


def test_atom_attention_bias_cache():
    """Outside a scope: reused for the same z and mask objects, recomputed for a new mask (its
    windows and mask differ) and after an in-place change of the mask."""
    host, ours = atom_host_and_ours(seed=13)
    cache = ours.flash_bias.bias_cache
    a, s, z, mask = atom_inputs(100, (100, 80), seed=7)
    with torch.no_grad():
        first = ours(a=a, z=z, s=s, mask=mask)
        assert torch.equal(ours(a=a, z=z, s=s, mask=mask), first)
        assert (cache.hits, cache.misses) == (1, 1)
        other = mask.clone()
        other[0, :, 90:] = 0
        out = ours(a=a, z=z, s=s, mask=other)
        assert (cache.hits, cache.misses) == (1, 2)
        valid = other.expand(a.shape[:-1]).bool()
        assert rel_err(out[valid], host(a=a, z=z, s=s, mask=other)[valid]) < RTOL
        other[1, :, 60:] = 0  # in place: recomputed
        out = ours(a=a, z=z, s=s, mask=other)
        assert cache.misses == 3
        valid = other.expand(a.shape[:-1]).bool()
        assert rel_err(out[valid], host(a=a, z=z, s=s, mask=other)[valid]) < RTOL


# ---------------------------------------------------------------------------------------------
# the tiny full model

STEPS, SAMPLES = 3, 2


@pytest.fixture(scope="module")
def openfold3_model():
    from openfold3.projects.of3_all_atom.model import OpenFold3

    config = openfold3_config("tiny")
    config.architecture.shared.diffusion.no_full_rollout_steps = STEPS
    config.architecture.shared.diffusion.no_full_rollout_samples = SAMPLES
    config.architecture.diffusion_module.diffusion_transformer.no_blocks = 2
    torch.manual_seed(0)
    model = randomise_(OpenFold3(config)).eval()
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    return model, synthetic_features(seq[:10], seed=0), synthetic_features(seq[2:12], seed=1)


def run_positions(model, batch, updates=None, inference_mode=False):
    """The predicted atom positions; with a list ``updates``, the diffusion transformer's
    attention updates (every block, every step, whatever module is in place) are appended to it:
    the positions alone are a weak check (the residual stream and the late steps' small noise
    levels scale the attention's contribution down). Under torch.no_grad, or
    torch.inference_mode (Lightning's predict)."""
    seed_all(0)
    blocks = model.diffusion_module.diffusion_transformer.blocks
    handles = (
        [b.attention_pair_bias.register_forward_hook(lambda m, args, out: updates.append(out.clone())) for b in blocks]
        if updates is not None
        else []
    )
    try:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            _, out = model({k: v.clone() for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    return out["atom_positions_predicted"]


def test_openfold3_full_model_diffusion_kind(openfold3_model):
    model, batch, other = openfold3_model
    ref_steps = []
    ref, ref_other = run_positions(model, batch, ref_steps), run_positions(model, other)
    assert len(ref_steps) == STEPS * 2  # 2 blocks
    n_atom = int(batch["num_atoms_per_token"].sum())
    assert ref.shape == (1, SAMPLES, n_atom, 3) and torch.isfinite(ref).all()

    # the input embedder's atom encoder is stack "input", not "diffusion"; "msa" holds no atom kind
    with pytest.raises(UnsupportedModelError, match="found no atom attention"):
        fb.patch_model(model, kinds=("atom",), stacks=("msa",))
    assert not patched_modules(model)

    report = fb.patch_model(model, kinds=("diffusion",), stacks=("diffusion",))
    assert [(e.kind, e.stack, e.block) for e in report.entries] == [
        ("diffusion", "diffusion", 0),
        ("diffusion", "diffusion", 1),
    ]
    assert report.params_added == 0
    steps = []
    assert rel_err(run_positions(model, batch, steps), ref) < 1e-4
    # every attention update, block by block and step by step (the same noise: same inputs)
    assert len(steps) == len(ref_steps) and all(rel_err(x, r) < 1e-5 for x, r in zip(steps, ref_steps))
    for path, m in patched_modules(model).items():
        cache = m.flash_bias.bias_cache
        # one DiffusionModule call per step (the samples ride along in a batch dimension):
        # computed at the first step, reused at every later one
        assert (cache.hits, cache.misses) == (STEPS - 1, 1), path
        assert cache.payload is None, path  # freed with the prediction's trunk tensors
    # a second trunk pass on other inputs: recomputed, still exact (never a stale bias)
    assert rel_err(run_positions(model, other), ref_other) < 1e-4
    fb.unpatch_model(model)
    assert not patched_modules(model)
    assert torch.equal(run_positions(model, batch), ref)
    dm = model.diffusion_module
    assert not dm._forward_pre_hooks and not dm._forward_hooks

    errors = []
    n_token = 10
    for rank in (2, 5, n_token):  # rank N_token: the full SVD
        fb.patch_model(
            model,
            kinds=("diffusion",),
            stacks=("diffusion",),
            mode="lowrank",
            svd_config=SVDConfig(rel_error=0.0, max_rank=rank),
        )
        for m in patched_modules(model).values():
            assert m.mode == "lowrank" and m.flash_bias.factor_network is None
        steps = []
        run_positions(model, batch, steps)
        errors.append(max(rel_err(x, r) for x, r in zip(steps, ref_steps)))
        assert all(m.flash_bias.last_svd.rank == rank for m in patched_modules(model).values())
        fb.unpatch_model(model)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4, errors
    assert torch.equal(run_positions(model, batch), ref)


def atom_updates(model):
    """Hooks appending the update of every atom transformer attention, whatever module is in place."""
    updates, handles = [], []
    for path, m in model.named_modules():
        if path.endswith("atom_transformer"):
            for b in m.blocks:
                handles.append(
                    b.attention_pair_bias.register_forward_hook(
                        lambda mod, args, out, path=path: updates.append((path, out.clone()))
                    )
                )
    return updates, handles


def test_openfold3_full_model_atom_kind(openfold3_model):
    model, batch, other = openfold3_model
    ref_updates, handles = atom_updates(model)
    ref = run_positions(model, batch)
    for h in handles:
        h.remove()
    ref_other = run_positions(model, other)
    # the input embedder's encoder once, the diffusion module's encoder and decoder once per step
    assert len(ref_updates) == 1 + 2 * STEPS

    report = fb.patch_model(model, kinds=("diffusion", "atom"), stacks=("diffusion", "input"))
    atom = [(e.kind, e.stack, e.path) for e in report.entries if e.kind == "atom"]
    assert [(k, st) for k, st, _ in atom] == [("atom", "input"), ("atom", "diffusion"), ("atom", "diffusion")]
    assert sum(e.kind == "diffusion" for e in report.entries) == 2
    assert all(e.mode == "exact" for e in report.entries) and report.params_added == 0
    updates, handles = atom_updates(model)
    try:
        assert rel_err(run_positions(model, batch), ref) < 1e-4
    finally:
        for h in handles:
            h.remove()
    # every atom attention update (all atoms are valid in these features), call by call
    assert [p for p, _ in updates] == [p for p, _ in ref_updates]
    assert all(rel_err(x, r) < 1e-5 for (_, x), (_, r) in zip(updates, ref_updates))
    for path, m in patched_modules(model).items():
        cache = m.flash_bias.bias_cache
        if m.site_kind == "atom" and m.site_stack == "input":
            assert (cache.hits, cache.misses) == (0, 1), path  # run once per prediction
        else:  # computed at the first diffusion step, reused at every later one
            assert (cache.hits, cache.misses) == (STEPS - 1, 1), path
    # a second trunk pass on other inputs: recomputed, still exact
    assert rel_err(run_positions(model, other), ref_other) < 1e-4
    fb.unpatch_model(model)
    assert not patched_modules(model)
    assert torch.equal(run_positions(model, batch), ref)
    dm = model.diffusion_module
    assert not dm._forward_pre_hooks and not dm._forward_hooks


@pytest.mark.parametrize("trust", [False, True], ids=["default", "trust_inference_tensors"])
def test_openfold3_full_model_under_inference_mode(openfold3_model, trust):
    """Under torch.inference_mode the trunk outputs are inference tensors (no version counter):
    by default the bias is recomputed at every step; with trust_inference_tensors=True it is
    computed once per trunk pass and reused (a second input still recomputes); exact either way."""
    model, batch, other = openfold3_model
    ref = run_positions(model, batch, inference_mode=True)
    ref_other = run_positions(model, other, inference_mode=True)
    fb.patch_model(model, kinds=("diffusion", "atom"), stacks=("diffusion",), trust_inference_tensors=trust)
    wrappers = patched_modules(model)
    assert len(wrappers) == 4  # 2 diffusion transformer blocks, the atom encoder's and decoder's
    assert rel_err(run_positions(model, batch, inference_mode=True), ref) < 1e-4
    for path, m in wrappers.items():
        cache = m.flash_bias.bias_cache
        assert (cache.hits, cache.misses) == ((STEPS - 1, 1) if trust else (0, STEPS)), path
    assert rel_err(run_positions(model, other, inference_mode=True), ref_other) < 1e-4
    for path, m in wrappers.items():
        cache = m.flash_bias.bias_cache
        assert (cache.hits, cache.misses) == ((2 * STEPS - 2, 2) if trust else (0, 2 * STEPS)), path
    scope = next(iter(wrappers.values())).flash_bias.scope
    assert scope.trust_inference_tensors == trust
    fb.unpatch_model(model)
    assert not scope.trust_inference_tensors  # the setting goes with the patch
    assert torch.equal(run_positions(model, batch, inference_mode=True), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_matches_host(dtype, no_tf32):
    """OpenFold3's sizes (c_token 768, 16 heads x 48, c_s 384, c_z 128) on CUDA (the Triton
    kernels), 5 samples sharing the pair rep, padded tokens masked: ours against the host module,
    both in fp32 (no TF32) or both under bf16 autocast; the second call reads the cached bias."""
    torch.manual_seed(0)
    n, c_a, c_s, c_z, heads = 384, 768, 384, 128, 16
    host = (
        randomise_(
            DiffusionAttentionPairBias(
                c_q=c_a, c_k=c_a, c_v=c_a, c_s=c_s, c_z=c_z, c_hidden=c_a // heads, no_heads=heads
            ),
            27,
        )
        .cuda()
        .eval()
    )
    site = Site(path="x", parent=None, attr="x", module=host, kind="diffusion", node=None, stack="diffusion", block=0)
    ours = make_replacement(site, mode="exact", factor_config=None)
    a, s = rand(1, 5, n, c_a, seed=28).cuda(), rand(1, 5, n, c_s, seed=29).cuda()
    z = rand(1, 1, n, n, c_z, seed=30).cuda()
    mask = torch.ones(1, 1, n, device="cuda")
    mask[..., -17:] = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = host(a=a, z=z, s=s, mask=mask)
        out = ours(a=a, z=z, s=s, mask=mask)
        again = ours(a=a, z=z, s=s, mask=mask)  # from the cached bias
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert rel_err(out, ref) < tol and torch.equal(again, out)
    assert ours.flash_bias.bias_cache.hits == 1
