"""Boltz-2's diffusion attentions (kinds "diffusion" and "atom") on the FlashBias op, against the
real boltz 2.2.1 modules (CPU, fp32, random non-zero weights).

* module level: ``FlashBiasPrecomputedBiasAttention`` built by the Boltz adapter on a host
  ``AttentionPairBias`` (compute_pair_bias=False, as in every ``DiffusionTransformerLayer``)
  reproduces it on fresh random inputs: the token transformer's form (a layer's slice of the
  precomputed all-layer bias, shared by ``multiplicity`` samples: the op gets it with batch 1,
  read with stride 0; float key masks with padding) and the atom transformer's (keys from
  ``to_keys`` windows, the bias already repeated by the host); the bias cache hits only for the
  same bias tensor unmodified; lowrank with a full-rank SVD matches.
* diffusion-module level: a small seeded ``DiffusionModule`` (the score model of
  ``AtomDiffusion``) with synthetic conditioning, 2 structures x 2 samples, patched with kinds
  "diffusion" + "atom": same r_update as the host over several "steps" (the token biases reused
  from the first), unpatch bit-identical, lowrank SVD with a generous rank close to exact.
"""

from functools import partial

import pytest
import torch

try:
    from boltz.model.layers.attentionv2 import AttentionPairBias
    from boltz.model.modules.diffusionv2 import DiffusionModule
    from boltz.model.modules.encodersv2 import get_indexing_matrix, single_to_keys
except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
    pytest.skip(
        f"boltz's diffusion module cannot be imported ({type(e).__name__}: {e}); install "
        "pip install --no-deps boltz==2.2.1 einops einx==0.3.0 frozendict",
        allow_module_level=True,
    )

from host_models import randomise_
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts.base import Site, UnsupportedModuleError
from pairformer_fb.hosts.boltz.adapter import BoltzDiffusionAttention, make_replacement
from pairformer_fb.modules import precomputed_bias_attention
from pairformer_fb.modules.bias_cache import SVDConfig
from pairformer_fb.modules.factor_network import FactorConfig

pytestmark = [pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")]

C, HEADS, LAYERS = 32, 4, 3
RTOL = 1e-5


def host_and_ours(kind="diffusion", mode="exact", seed=1, **kwargs):
    host = randomise_(AttentionPairBias(c_s=C, num_heads=HEADS, compute_pair_bias=False), seed).eval()
    site = Site(path="x", parent=None, attr="x", module=host, kind=kind, node=None, stack="diffusion", block=0)
    return host, make_replacement(site, mode=mode, factor_config=None, **kwargs)


def token_inputs(batch=2, mult=3, n=11, seed=0):
    """s [B*m, N, C]; one layer's slice [B, N, N, H] of an all-layer bias [B, N, N, L*H] (a
    strided view, as DiffusionTransformer hands it); float 0/1 token masks [B*m, N] with padding."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch * mult, n, C, generator=g)
    all_bias = 2 * torch.randn(batch, n, n, LAYERS * HEADS, generator=g)
    mask = torch.ones(batch, n)
    mask[-1, n - 4 :] = 0
    return s, all_bias, mask.repeat_interleave(mult, 0)


def layer_slice(all_bias, i=1):
    B, N, M, D = all_bias.shape
    return all_bias.view(B, N, M, LAYERS, D // LAYERS)[:, :, :, i]


def test_token_attention_matches_host_and_reads_bias_with_stride_0(monkeypatch):
    host, ours = host_and_ours()
    s, all_bias, mask = token_inputs()
    bias = layer_slice(all_bias)
    with torch.no_grad():
        ref = host(s, bias, mask, s, multiplicity=3)
        calls = []
        real = precomputed_bias_attention.flash_bias_attention

        def spy(q, k, v, **kw):
            calls.append((q.shape[0], kw["bias"].shape[0], kw["bias"].is_contiguous()))
            return real(q, k, v, **kw)

        monkeypatch.setattr(precomputed_bias_attention, "flash_bias_attention", spy)
        out = ours(s, bias, mask, s, multiplicity=3)
    assert rel_err(out, ref) < RTOL
    # one op call per structure: its 3 samples against the structure's bias of batch 1
    assert calls == [(3, 1, True), (3, 1, True)]
    # the padded keys matter: without the mask the host differs
    with torch.no_grad():
        unmasked = host(s, bias, torch.ones_like(mask), s, multiplicity=3)
    assert rel_err(unmasked, ref) > 1e-3


def test_atom_attention_matches_host():
    """The atom transformer's call: queries in windows of W atoms, keys from to_keys (windows of
    H), the bias already repeated by the host, multiplicity 1."""
    host, ours = host_and_ours(kind="atom")
    assert ours.flash_bias.cache_bias is False and ours.mode == "exact"
    g = torch.Generator().manual_seed(3)
    W, H, K, Bm = 8, 32, 4, 2
    atoms = torch.randn(Bm, K * W, C, generator=g)
    atom_mask = torch.ones(Bm, K * W)
    atom_mask[1, -5:] = 0
    to_keys = partial(single_to_keys, indexing_matrix=get_indexing_matrix(K, W, H, "cpu"), W=W, H=H)
    s = atoms.view(Bm * K, W, C)
    k_in = to_keys(atoms).view(Bm * K, H, C)
    mask = to_keys(atom_mask.unsqueeze(-1)).view(Bm * K, H)
    bias = 2 * torch.randn(Bm * K, W, H, HEADS, generator=g)
    assert (mask == 0).any() and (mask.sum(-1) > 0).all()  # masked keys, no fully masked window
    with torch.no_grad():
        ref = host(s, bias, mask, k_in)
        out = ours(s, bias, mask, k_in)
    assert rel_err(out, ref) < RTOL


def test_bias_cache_hits_only_for_the_same_unmodified_bias():
    host, ours = host_and_ours()
    s, all_bias, mask = token_inputs(seed=5)
    cache = ours.flash_bias.bias_cache
    with torch.no_grad():
        ours(s, layer_slice(all_bias), mask, s, multiplicity=3)
        out = ours(s, layer_slice(all_bias), mask, s, multiplicity=3)  # a fresh view of the same tensor
        assert (cache.misses, cache.hits) == (1, 1)
        assert rel_err(out, host(s, layer_slice(all_bias), mask, s, multiplicity=3)) < RTOL
        all_bias[:, :, :, HEADS : 2 * HEADS] += 1.5 * torch.randn_like(all_bias[:, :, :, :HEADS])  # layer 1's slice
        out = ours(s, layer_slice(all_bias), mask, s, multiplicity=3)
        assert (cache.misses, cache.hits) == (2, 1)
        assert rel_err(out, host(s, layer_slice(all_bias), mask, s, multiplicity=3)) < RTOL
        other = layer_slice(all_bias, 2)  # another slice of the same tensor: not the cached bias
        out = ours(s, other, mask, s, multiplicity=3)
        assert cache.misses == 3
        assert rel_err(out, host(s, other, mask, s, multiplicity=3)) < RTOL


def test_lowrank_full_rank_svd_matches_host_and_bad_options_are_refused():
    host, ours = host_and_ours(mode="lowrank", svd_config=SVDConfig(rel_error=0.0, max_rank=None))
    s, all_bias, mask = token_inputs(seed=7)
    bias = layer_slice(all_bias)
    with torch.no_grad():
        ref = host(s, bias, mask, s, multiplicity=3)
        out = ours(s, bias, mask, s, multiplicity=3)
    assert rel_err(out, ref) < 1e-4
    assert ours.flash_bias.last_svd.rank == s.shape[1]
    site = Site(path="x", parent=None, attr="x", module=host, kind="diffusion", node=None, stack="diffusion", block=0)
    with pytest.raises(UnsupportedModuleError, match="precomputed bias"):
        make_replacement(site, mode="lowrank", factor_config=FactorConfig(rank=4))
    with pytest.raises(UnsupportedModuleError, match="precomputed bias"):
        make_replacement(site, mode="distill", factor_config=None)
    with pytest.raises(ValueError, match=r"bias must be \[B, Lq, Lk, H\]"):
        ours(s, bias, mask, s, multiplicity=2)


# ---------------------------------------------------------------------------------------------
# the diffusion module

TOKEN_S, ATOM_S, W, H = 16, 8, 8, 32
DEPTH, DM_HEADS = 2, 2


def make_diffusion_module():
    torch.manual_seed(0)
    dm = DiffusionModule(
        token_s=TOKEN_S,
        atom_s=ATOM_S,
        atoms_per_window_queries=W,
        atoms_per_window_keys=H,
        dim_fourier=16,
        atom_encoder_depth=DEPTH,
        atom_encoder_heads=DM_HEADS,
        token_transformer_depth=DEPTH,
        token_transformer_heads=DM_HEADS,
        atom_decoder_depth=DEPTH,
        atom_decoder_heads=DM_HEADS,
        conditioning_transition_layers=1,
    )
    return randomise_(dm, 1).eval()


def dm_inputs(batch=2, mult=2, n_tokens=9, n_atoms=32, seed=2):
    """The score model's arguments with synthetic trunk outputs and diffusion conditioning (the
    precomputed per-layer biases of all transformers) for `batch` structures, the second padded."""
    g = torch.Generator().manual_seed(seed)
    K = n_atoms // W
    atom_mask = torch.ones(batch, n_atoms)
    atom_mask[-1, -6:] = 0
    token_mask = torch.ones(batch, n_tokens)
    token_mask[-1, -2:] = 0
    owner = torch.arange(n_atoms) * (n_tokens - 2) // n_atoms  # atoms -> real tokens, in order
    atom_to_token = torch.nn.functional.one_hot(owner, n_tokens).float().expand(batch, -1, -1) * atom_mask[..., None]
    feats = {
        "ref_pos": torch.randn(batch, n_atoms, 3, generator=g),
        "atom_pad_mask": atom_mask,
        "atom_to_token": atom_to_token.contiguous(),
        "token_pad_mask": token_mask,
    }
    cond = {
        "q": torch.randn(batch, n_atoms, ATOM_S, generator=g),
        "c": torch.randn(batch, n_atoms, ATOM_S, generator=g),
        "atom_enc_bias": 2 * torch.randn(batch, K, W, H, DEPTH * DM_HEADS, generator=g),
        "atom_dec_bias": 2 * torch.randn(batch, K, W, H, DEPTH * DM_HEADS, generator=g),
        "token_trans_bias": 2 * torch.randn(batch, n_tokens, n_tokens, DEPTH * DM_HEADS, generator=g),
        "to_keys": partial(single_to_keys, indexing_matrix=get_indexing_matrix(K, W, H, "cpu"), W=W, H=H),
    }
    s_inputs = torch.randn(batch, n_tokens, TOKEN_S, generator=g)
    s_trunk = torch.randn(batch, n_tokens, TOKEN_S, generator=g)
    steps = [
        (torch.randn(batch * mult, n_atoms, 3, generator=g), torch.rand(batch * mult, generator=g)) for _ in range(3)
    ]
    fixed = {
        "s_inputs": s_inputs,
        "s_trunk": s_trunk,
        "feats": feats,
        "diffusion_conditioning": cond,
        "multiplicity": mult,
    }
    return fixed, steps


def run_steps(dm, fixed, steps):
    with torch.no_grad():
        return [dm(r_noisy=r, times=t, **fixed) for r, t in steps]


def test_diffusion_module_exact_patch_reproduces_host_and_unpatch_is_bit_identical():
    dm = make_diffusion_module()
    fixed, steps = dm_inputs()
    ref = run_steps(dm, fixed, steps)
    params_before = {id(p) for p in dm.parameters()}

    report = fb.patch_model(dm, kinds=("diffusion", "atom"))
    assert report.host == "boltz" and report.params_added == 0
    assert sorted(e.kind for e in report.entries) == ["atom"] * 4 + ["diffusion"] * 2
    assert all(e.stack == "diffusion" and e.mode == "exact" for e in report.entries)
    assert {id(p) for p in dm.parameters()} == params_before
    out = run_steps(dm, fixed, steps)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-4
    token = [m for m in dm.token_transformer.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert len(token) == DEPTH
    for m in token:  # computed at the first step, reused by the other two
        assert (m.flash_bias.bias_cache.misses, m.flash_bias.bias_cache.hits) == (1, 2)

    # a new trunk pass (new conditioning tensors): recomputed, still exact
    fixed2, steps2 = dm_inputs(seed=9)
    fb.unpatch_model(dm)
    ref2 = run_steps(dm, fixed2, steps2[:1])
    fb.patch_model(dm, kinds=("diffusion", "atom"))
    run_steps(dm, fixed, steps[:1])
    out2 = run_steps(dm, fixed2, steps2[:1])
    assert rel_err(out2[0], ref2[0]) < 1e-4

    assert len(fb.unpatch_model(dm)) == len(report)
    assert not dm._forward_pre_hooks and not dm._forward_hooks
    again = run_steps(dm, fixed, steps)
    for a, r in zip(again, ref):
        assert torch.equal(a, r)


def test_diffusion_module_lowrank_svd_is_close_to_exact():
    dm = make_diffusion_module()
    fixed, steps = dm_inputs()
    ref = run_steps(dm, fixed, steps[:2])
    fb.patch_model(dm, kinds=("diffusion", "atom"), mode="lowrank", svd_config=SVDConfig(rel_error=1e-4, max_rank=None))
    out = run_steps(dm, fixed, steps[:2])
    token = [m for m in dm.token_transformer.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert all(m.mode == "lowrank" and m.flash_bias.last_svd is not None for m in token)
    assert all(float(m.flash_bias.last_svd.rel_errors.max()) <= 1e-4 for m in token)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-3
    fb.unpatch_model(dm)
    # a coarse budget is further from exact but still an approximation of it
    fb.patch_model(dm, kinds=("diffusion",), mode="lowrank", svd_config=SVDConfig(rel_error=0.3, max_rank=None))
    coarse = run_steps(dm, fixed, steps[:1])[0]
    token = [m for m in dm.token_transformer.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert all(m.flash_bias.last_svd.rank < 9 for m in token)
    assert 1e-4 < rel_err(coarse, ref[0]) < 0.5
    fb.unpatch_model(dm)


def test_diffusion_module_under_inference_mode_stays_exact_without_reuse():
    """Lightning's predict runs under torch.inference_mode: its tensors have no version counter,
    so the scope cannot prove the bias unchanged and recomputes it every step (correct, slower)."""
    dm = make_diffusion_module()
    with torch.inference_mode():  # the trunk and the conditioning run inside it too
        fixed, steps = dm_inputs(seed=4)
        ref = [dm(r_noisy=r, times=t, **fixed) for r, t in steps[:2]]
        fb.patch_model(dm, kinds=("diffusion", "atom"))
        out = [dm(r_noisy=r, times=t, **fixed) for r, t in steps[:2]]
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-4
    token = [m for m in dm.token_transformer.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert all((m.flash_bias.bias_cache.misses, m.flash_bias.bias_cache.hits) == (2, 0) for m in token)
    fb.unpatch_model(dm)
    # lowrank there would recompute the SVD at every step: the user is told how to avoid it
    fb.patch_model(dm, kinds=("diffusion",), mode="lowrank")
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="inference_mode=False"):
        dm(r_noisy=steps[0][0], times=steps[0][1], **fixed)
    fb.unpatch_model(dm)


def test_boltz_diffusion_benchmark_runs_on_cpu(tmp_path):
    import json

    from bench_configs import bench_config

    from pairformer_fb.bench import boltz_diffusion as bench_boltz_diffusion

    cfg = bench_config(
        "bench_boltz_diffusion",
        tmp_path,
        [
            "n_sample=2",
            "diffusion.sizes=[12]",
            "diffusion.dim=32",
            "diffusion.heads=4",
            "diffusion.bias_layers=3",
            "atom.sizes=[20]",
            "atom.dim=16",
            "atom.heads=2",
            "atom.n_queries=8",
            "atom.n_keys=32",
            "svd.max_rank=4",
            "warmup_ms=1",
            "rep_ms=1",
        ],
    )
    records = bench_boltz_diffusion.run(cfg)
    by = {(r.module, r.variant): r for r in records}
    for key in [("diffusion", v) for v in ("stock", "exact", "exact_uncached", "lowrank")] + [
        ("atom", v) for v in ("stock", "exact", "exact_uncached")
    ]:
        assert by[key].status == "ok" and by[key].ms > 0, (key, by[key].status)
    for key in [("diffusion", "exact"), ("diffusion", "exact_uncached"), ("atom", "exact")]:
        assert by[key].rel_err < 1e-5, key  # ours computes the stock module's function
    assert by[("diffusion", "exact")].notes["cache_hits"] > 0
    assert by[("diffusion", "lowrank")].notes["rank"] == 4 and by[("diffusion", "lowrank")].rel_err < 0.5
    assert by[("atom", "lowrank")].status.startswith("skipped")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == len(records) and saved["environment"]["host"] == "boltz"


def test_input_embedder_atom_encoder_is_stack_input():
    from boltz.model.modules.trunkv2 import InputEmbedder

    from pairformer_fb.hosts import UnsupportedModelError

    emb = InputEmbedder(
        atom_s=8,
        atom_z=4,
        token_s=16,
        token_z=8,
        atoms_per_window_queries=W,
        atoms_per_window_keys=H,
        atom_feature_dim=10,
        atom_encoder_depth=DEPTH,
        atom_encoder_heads=DM_HEADS,
    )
    with pytest.raises(UnsupportedModelError, match="found no"):  # not in the default stacks
        fb.patch_model(emb, kinds=("diffusion", "atom"))
    report = fb.patch_model(emb, kinds=("atom",), stacks=("input",))
    assert [(e.kind, e.stack, e.mode) for e in report.entries] == [("atom", "input", "exact")] * DEPTH
    wrappers = [m for m in emb.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert all(w._scope is None and not w.flash_bias.cache_bias for w in wrappers)
    fb.unpatch_model(emb)


def test_diffusion_module_chunks_of_samples_reuse_the_bias():
    """AtomDiffusion.sample splits the samples of a step into chunks (multiplicity per call
    varies): the token biases are still computed once and every chunk is exact."""
    dm = make_diffusion_module()
    fixed, steps = dm_inputs(batch=1, mult=3, seed=6)
    chunks = [(r[idx], t[idx]) for r, t in steps[:2] for idx in (slice(0, 2), slice(2, 3))]

    def run(model):
        with torch.no_grad():
            return [model(r_noisy=r, times=t, **(fixed | {"multiplicity": r.shape[0]})) for r, t in chunks]

    ref = run(dm)
    fb.patch_model(dm, kinds=("diffusion", "atom"))
    out = run(dm)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-4
    token = [m for m in dm.token_transformer.modules() if isinstance(m, BoltzDiffusionAttention)]
    assert all((m.flash_bias.bias_cache.misses, m.flash_bias.bias_cache.hits) == (1, 3) for m in token)
    fb.unpatch_model(dm)


@pytest.mark.gpu
def test_gpu_diffusion_module_matches_host(no_tf32):
    """On CUDA (the Triton kernels), fp32 without TF32 as Boltz-2 runs its diffusion: the patched
    score model against the host, exact and (full-rank SVD) lowrank."""
    dm = make_diffusion_module().cuda()
    fixed, steps = dm_inputs(n_atoms=64, n_tokens=20)
    to_cuda = lambda x: x.cuda() if isinstance(x, torch.Tensor) else x
    fixed = {
        k: ({kk: to_cuda(vv) for kk, vv in v.items()} if isinstance(v, dict) else to_cuda(v)) for k, v in fixed.items()
    }
    K = 64 // W
    fixed["diffusion_conditioning"]["to_keys"] = partial(
        single_to_keys, indexing_matrix=get_indexing_matrix(K, W, H, "cuda"), W=W, H=H
    )
    steps = [(r.cuda(), t.cuda()) for r, t in steps]
    ref = run_steps(dm, fixed, steps)
    fb.patch_model(dm, kinds=("diffusion", "atom"))
    for o, r in zip(run_steps(dm, fixed, steps), ref):
        assert rel_err(o, r) < 1e-4
    fb.unpatch_model(dm)
    fb.patch_model(dm, kinds=("diffusion", "atom"), mode="lowrank", svd_config=SVDConfig(rel_error=0.0, max_rank=None))
    for o, r in zip(run_steps(dm, fixed, steps), ref):
        assert rel_err(o, r) < 1e-3
    fb.unpatch_model(dm)
