"""patch_model / unpatch_model on real Boltz-2 modules (CPU, fp32).

The host modules are built from the installed ``boltz`` package (2.2.1, installed with
``pip install --no-deps boltz==2.2.1 einops``); the file is skipped without it. Boltz
zero-initialises its output projections, so every parameter is re-randomised.
"""

import sys

import pytest
import torch
from torch import nn

try:
    from boltz.model.layers.pairformer import PairformerModule
    from boltz.model.layers.triangular_attention.attention import TriangleAttentionEndingNode
    from boltz.model.modules.affinity import AffinityModule
    from boltz.model.modules.confidencev2 import ConfidenceModule
    from boltz.model.modules.trunkv2 import MSAModule, TemplateModule
except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
    pytest.skip(
        f"boltz cannot be imported ({type(e).__name__}: {e}); install it with "
        "pip install --no-deps boltz==2.2.1 einops",
        allow_module_level=True,
    )

from host_models import additive_pair, randomise_, set_exact_factors
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts import PatchedModule, UnsupportedModelError, UnsupportedModuleError, detect_host
from pairformer_fb.patching.patching import AlreadyPatchedError, patched_modules

C_Z, C_S, HEADS, TRI_HEADS, TRI_WIDTH = 16, 32, 4, 2, 8


def make_stack(n_blocks=3) -> PairformerModule:
    torch.manual_seed(0)
    stack = PairformerModule(
        C_S,
        C_Z,
        n_blocks,
        num_heads=HEADS,
        dropout=0.0,
        pairwise_head_width=TRI_WIDTH,
        pairwise_num_heads=TRI_HEADS,
        v2=True,
    )
    return randomise_(stack).eval()


def inputs(n=13, lengths=None, seed=1):
    """s, z, the token mask and the pair mask for a batch of len(lengths) (float 0/1 masks as
    Boltz has them; lengths=None: one element, no padding)."""
    g = torch.Generator().manual_seed(seed)
    batch = 1 if lengths is None else len(lengths)
    s = torch.randn(batch, n, C_S, generator=g)
    z = torch.randn(batch, n, n, C_Z, generator=g)
    token = torch.ones(batch, n)
    for b, length in enumerate(lengths or []):
        token[b, length:] = 0
    return s, z, token, token[:, :, None] * token[:, None, :]


def run(stack, s, z, mask, pair_mask, chunk_size=None, **kwargs):
    """The stack's forward (chunk_size None) or its layers with an explicit triangle chunk size
    (PairformerModule picks 512 / 128 itself, more than the test's N)."""
    with torch.no_grad():
        if chunk_size is None and not kwargs:
            return stack(s.clone(), z.clone(), mask, pair_mask)
        s, z = s.clone(), z.clone()
        for layer in stack.layers:
            s, z = layer(s, z, mask, pair_mask, chunk_size, **kwargs)
        return s, z


@pytest.mark.parametrize("lengths", [None, (13, 9)], ids=["no-padding", "padding"])
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["plain", "chunked"])
def test_exact_patch_reproduces_host_and_unpatch_is_bit_identical(lengths, chunk_size):
    stack = make_stack()
    s, z, mask, pair_mask = inputs(lengths=lengths)
    ref_s, ref_z = run(stack, s, z, mask, pair_mask, chunk_size)
    params_before = {id(p) for p in stack.parameters()}

    report = fb.patch_model(stack)
    assert report.host == "boltz" and len(report) == 9 and report.params_added == 0
    assert [(e.kind, e.node) for e in report.entries[:3]] == [
        ("triangle", "starting"),
        ("triangle", "ending"),
        ("single", None),
    ]
    assert all(e.mode == "exact" and e.rank is None for e in report.entries)
    # no parameter added, none copied: the patched model holds exactly the host's objects
    assert {id(p) for p in stack.parameters()} == params_before
    out_s, out_z = run(stack, s, z, mask, pair_mask, chunk_size)
    assert rel_err(out_s, ref_s) <= 1e-5 and rel_err(out_z, ref_z) <= 1e-5
    # the cuequivariance switch of the triangle attention computes the same function: ignored
    # (use_kernels would also switch the triangle multiplications to cuequivariance: not on CPU)
    out2_s, out2_z = run(stack, s, z, mask, pair_mask, chunk_size, use_cuequiv_attn=True)
    assert torch.equal(out2_s, out_s) and torch.equal(out2_z, out_z)

    restored = fb.unpatch_model(stack)
    assert len(restored) == 9 and not patched_modules(stack)
    back_s, back_z = run(stack, s, z, mask, pair_mask, chunk_size)
    assert torch.equal(back_s, ref_s) and torch.equal(back_z, ref_z)


def test_parameters_are_shared_not_copied():
    stack = make_stack(n_blocks=1)
    layer = stack.layers[0]
    tri, end, apb = layer.tri_att_start, layer.tri_att_end, layer.attention
    fb.patch_model(stack)
    ours_tri, ours_end, ours_apb = (
        layer.tri_att_start.flash_bias,
        layer.tri_att_end.flash_bias,
        layer.attention.flash_bias,
    )
    pairs = [
        (ours_tri.layer_norm.weight, tri.layer_norm.weight),
        (ours_tri.layer_norm.bias, tri.layer_norm.bias),
        (ours_tri.linear_b.weight, tri.linear.weight),
        (ours_tri.linear_q.weight, tri.mha.linear_q.weight),
        (ours_tri.linear_k.weight, tri.mha.linear_k.weight),
        (ours_tri.linear_v.weight, tri.mha.linear_v.weight),
        (ours_tri.linear_g.weight, tri.mha.linear_g.weight),
        (ours_tri.linear_o.weight, tri.mha.linear_o.weight),
        (ours_end.linear_b.weight, end.linear.weight),
        (ours_end.layer_norm.bias, end.layer_norm.bias),
        (ours_apb.layer_norm_z.weight, apb.proj_z[0].weight),
        (ours_apb.layer_norm_z.bias, apb.proj_z[0].bias),
        (ours_apb.linear_z.weight, apb.proj_z[1].weight),
        (ours_apb.linear_q.weight, apb.proj_q.weight),
        (ours_apb.linear_q.bias, apb.proj_q.bias),
        (ours_apb.linear_k.weight, apb.proj_k.weight),
        (ours_apb.linear_v.weight, apb.proj_v.weight),
        (ours_apb.linear_g.weight, apb.proj_g.weight),
        (ours_apb.linear_o.weight, apb.proj_o.weight),
    ]
    for ours, host in pairs:
        assert ours is host and ours.data_ptr() == host.data_ptr()
    # the host's bias-free linears stay bias-free; the pre-norm of s stays outside (the layer's)
    assert ours_tri.linear_g.bias is None and ours_tri.linear_o.bias is None and ours_apb.linear_k.bias is None
    assert ours_apb.layer_norm_s is None and ours_apb.linear_o.bias is None
    assert (ours_tri.node, ours_end.node, ours_end.ending_bias) == ("starting", "ending", "transposed")
    # an in-place update of a host parameter is seen by the patched module
    _, z, _, pair_mask = inputs(n=7)
    with torch.no_grad():
        before = layer.tri_att_start(z, pair_mask)
        tri.mha.linear_o.weight.mul_(2.0)
        after = layer.tri_att_start(z, pair_mask)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-6)  # linear_o has no bias
    # module conversions reach the host module too (it is unregistered but shares the objects)
    stack.to(torch.float64)
    assert tri.linear.weight is ours_tri.linear_b.weight and tri.linear.weight.dtype == torch.float64


def test_ending_node_takes_its_bias_from_the_transposed_pair():
    """Boltz's TriangleAttentionEndingNode transposes z itself: our ending_bias="transposed";
    the other convention gives a different function on a non-symmetric z."""
    torch.manual_seed(0)
    host = randomise_(TriangleAttentionEndingNode(C_Z, TRI_WIDTH, TRI_HEADS, inf=1e9))
    holder = nn.Module()  # the Site's parent (the wrapper is called directly, not installed)
    _, z, _, pair_mask = inputs(n=9, lengths=(9, 6))
    with torch.no_grad():
        ref = host(z, pair_mask)
        ref_chunked = host(z, pair_mask, chunk_size=3)
    from pairformer_fb.hosts.base import Site
    from pairformer_fb.hosts.boltz import adapter

    site = Site(
        path="tri", parent=holder, attr="tri", module=host, kind="triangle", node="ending", stack="pairformer", block=0
    )
    wrapper = adapter.make_replacement(site, mode="exact", factor_config=None)
    with torch.no_grad():
        assert rel_err(wrapper(z, pair_mask), ref) <= 1e-5
        assert rel_err(wrapper(z, pair_mask, chunk_size=3, use_kernels=True), ref_chunked) <= 1e-5
        assert rel_err(wrapper(z, None), host(z, None)) <= 1e-5
        wrapper.flash_bias.ending_bias = "untransposed"
        assert rel_err(wrapper(z, pair_mask), ref) > 1e-3


def test_errors():
    stack = make_stack(n_blocks=1)
    fb.patch_model(stack)
    with pytest.raises(AlreadyPatchedError, match="already patched"):
        fb.patch_model(stack)
    fb.unpatch_model(stack)
    with pytest.raises(ValueError, match="no patched module"):
        fb.unpatch_model(stack)
    with pytest.raises(UnsupportedModelError, match="found no"):
        fb.patch_model(nn.Sequential(nn.Linear(4, 4)), host="boltz")
    with pytest.raises(ValueError, match="stacks"):
        fb.patch_model(stack, stacks=("trunk",))
    with pytest.raises(ValueError, match="s_inputs"):
        fb.patch_model(stack, mode="lowrank", factor_config=fb.FactorConfig(rank=4, use_s_inputs=True, c_s_inputs=8))
    layer = stack.layers[0]
    layer.tri_att_end.inf = 1e8
    with pytest.raises(UnsupportedModuleError, match="inf=1e[+]08"):
        fb.patch_model(stack)
    layer.tri_att_end.inf = 1e9
    layer.attention.inf = 1e4
    with pytest.raises(UnsupportedModuleError, match="inf=10000 < 1e[+]06"):
        fb.patch_model(stack)
    assert not patched_modules(stack)  # a failed patch leaves the model untouched
    report = fb.patch_model(stack, kinds=("triangle",))  # the single attention left alone
    assert [e.kind for e in report.entries] == ["triangle", "triangle"]


def test_missing_host_package(monkeypatch):
    for name in (
        "boltz.model.layers.pairformer",
        "boltz.model.layers.attentionv2",
        "boltz.model.layers.triangular_attention.attention",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match="pip install --no-deps boltz"):
        fb.patch_model(nn.Linear(4, 4), host="boltz")


def test_single_attention_fallbacks_and_fp32():
    """k_in other than s or multiplicity != 1 (unused by the Pairformer) run the host module;
    the normal call matches the host in fp32."""
    stack = make_stack(n_blocks=1)
    host = stack.layers[0].attention
    s, z, mask, _ = inputs(n=9, lengths=(9, 5))
    k_in = torch.randn_like(s)
    with torch.no_grad():
        ref = host(s=s, z=z, mask=mask, k_in=s)
        ref_k = host(s=s, z=z, mask=mask, k_in=k_in)
        fb.patch_model(stack)
        wrapper = stack.layers[0].attention
        out = wrapper(s=s, z=z, mask=mask, k_in=s)
        assert out.dtype == torch.float32 and rel_err(out, ref) <= 1e-5
        assert torch.equal(wrapper(s=s, z=z, mask=mask, k_in=k_in), ref_k)


def test_per_block_modes_and_selection():
    stack = make_stack()
    report = fb.patch_model(stack, mode={"lowrank": [0], "exact": ...}, rank=3)
    modes = {(e.block, e.path.rsplit(".", 1)[1]): (e.mode, e.rank) for e in report.entries}
    assert modes[(0, "tri_att_end")] == ("lowrank", 3) and modes[(2, "attention")] == ("exact", None)
    assert [e.block for e in report.entries if e.params_added] == [0, 0, 0]
    fn_params = sum(
        p.numel()
        for m in patched_modules(stack).values()
        if m.flash_bias.factor_network is not None
        for p in m.flash_bias.factor_network.parameters()
    )
    assert report.params_added == fn_params > 0
    assert "lowrank" in str(report) and "layers.0.tri_att_start" in str(report)
    s, z, mask, pair_mask = inputs(n=7, lengths=(5,))
    out_s, out_z = run(stack, s, z, mask, pair_mask)
    assert torch.isfinite(out_s).all() and torch.isfinite(out_z).all()
    # distill mode: the host's callers get the update; the loss is kept on the wrapper
    for attr in ("tri_att_end", "attention"):
        wrapper = getattr(stack.layers[0], attr)
        wrapper.mode = "distill"
        run(stack, s, z, mask, pair_mask)
        assert wrapper.last_distill_loss is not None and wrapper.last_distill_loss.item() > 0
    fb.unpatch_model(stack)

    # a callable rule (None: leave the block alone), blocks= and kinds= selections
    report = fb.patch_model(stack, mode=lambda b: None if b == 1 else "exact")
    assert sorted({e.block for e in report.entries}) == [0, 2]
    assert isinstance(stack.layers[0].tri_att_start, PatchedModule)
    assert not isinstance(stack.layers[1].tri_att_start, PatchedModule)
    fb.unpatch_model(stack)
    report = fb.patch_model(stack, blocks=[2], kinds=("single",))
    assert [(e.block, e.kind, e.path) for e in report.entries] == [(2, "single", "layers.2.attention")]
    fb.unpatch_model(stack)


def test_lowrank_with_an_exactly_low_rank_bias_reproduces_exact_and_host():
    """The bias of an additive pair rep is exactly rank 2; the factor networks are set to give
    it (from the same layer-normed pair rep as the dense bias, in the bias' orientation: the
    transposed one for the ending node), so lowrank == exact == host for all three modules."""
    stack = make_stack(n_blocks=1)
    layer = stack.layers[0]
    g = torch.Generator().manual_seed(3)
    n = 11
    z = additive_pair(n, C_Z, g)[None]
    s = torch.randn(1, n, C_S, generator=g)
    ones = torch.ones(1, n)
    calls = {
        "tri_att_start": lambda m: m(z, None),
        "tri_att_end": lambda m: m(z, None),
        "attention": lambda m: m(s=s, z=z, mask=ones, k_in=s),
    }
    with torch.no_grad():
        refs = {name: call(getattr(layer, name)) for name, call in calls.items()}
    report = fb.patch_model(stack, mode="lowrank", factor_config=fb.FactorConfig(rank=2, depth=0))
    assert len(report) == 3 and all(e.rank == 2 for e in report.entries)
    with torch.no_grad():
        for name, call in calls.items():
            ours = getattr(layer, name).flash_bias
            if name == "attention":
                weight, pair = ours.linear_z.weight, ours.layer_norm_z(z[0])
            else:
                weight, pair = ours.linear_b.weight, ours.layer_norm(z[0])
                if name == "tri_att_end":
                    pair = pair.transpose(0, 1)  # the bias' orientation: from the transposed z
            set_exact_factors(ours.factor_network, weight, pair)
            low = call(getattr(layer, name))
            ours.mode = "exact"
            exact = call(getattr(layer, name))
            assert rel_err(exact, refs[name]) <= 1e-5, name
            assert rel_err(low, exact) <= 1e-5, name
        # and the construction is not vacuous: a perturbed factor network does differ
        end = layer.tri_att_end.flash_bias
        end.mode = "lowrank"
        end.factor_network.query_mlp[0].bias[1::2].add_(1.0)  # doubles every head's v_k term
        assert rel_err(calls["tri_att_end"](layer.tri_att_end), refs["tri_att_end"]) > 1e-3


def test_stack_selection_msa_and_template():
    """The MSA module's and the template module's PairformerNoSeqLayers are patched only when
    their stacks are selected; each replaced module computes its host module's function."""
    torch.manual_seed(0)
    model = nn.Module()
    model.template_module = TemplateModule(
        C_Z, template_dim=8, template_blocks=1, dropout=0.0, pairwise_head_width=TRI_WIDTH, pairwise_num_heads=TRI_HEADS
    )
    model.msa_module = MSAModule(
        msa_s=8,
        token_z=C_Z,
        token_s=C_S,
        msa_blocks=2,
        msa_dropout=0.0,
        z_dropout=0.0,
        pairwise_head_width=TRI_WIDTH,
        pairwise_num_heads=TRI_HEADS,
    )
    model.pairformer_module = PairformerModule(
        C_S, C_Z, 1, num_heads=HEADS, dropout=0.0, pairwise_head_width=TRI_WIDTH, pairwise_num_heads=TRI_HEADS, v2=True
    )
    randomise_(model).eval()
    assert detect_host(model) == "boltz"
    report = fb.patch_model(model)
    assert {e.stack for e in report.entries} == {"pairformer"} and len(report) == 3
    fb.unpatch_model(model)
    report = fb.patch_model(model, stacks=("msa", "template"), blocks=[1])
    assert [(e.stack, e.block, e.path) for e in report.entries] == [
        ("msa", 1, "msa_module.layers.1.pairformer_layer.tri_att_start"),
        ("msa", 1, "msa_module.layers.1.pairformer_layer.tri_att_end"),
    ]
    fb.unpatch_model(model)
    report = fb.patch_model(model, stacks=("msa", "template"))
    assert sorted({(e.stack, e.block) for e in report.entries}) == [("msa", 0), ("msa", 1), ("template", 0)]
    _, z, _, pair_mask = inputs(n=9, lengths=(6,))
    for wrapper in patched_modules(model).values():
        zc = z[..., : wrapper.flash_bias.c_z]  # the template stack works on template_dim channels
        with torch.no_grad():
            assert rel_err(wrapper(zc, pair_mask, chunk_size=3), wrapper.host_module(zc, pair_mask)) <= 1e-5


def test_stack_selection_confidence_and_affinity():
    """The confidence module's PairformerModule (v2) and the affinity module's
    PairformerNoSeqModule are their own stacks; the patched confidence stack matches its host."""
    torch.manual_seed(0)
    args = dict(dropout=0.0, pairwise_head_width=TRI_WIDTH, pairwise_num_heads=TRI_HEADS)
    model = nn.Module()
    model.confidence_module = ConfidenceModule(
        C_S, C_Z, dict(num_blocks=2, num_heads=HEADS, **args), confidence_args={}
    )
    model.affinity_module = AffinityModule(
        C_S,
        C_Z,
        dict(num_blocks=1, **args),
        transformer_args=dict(token_s=C_S, num_blocks=1, num_heads=HEADS, activation_checkpointing=False),
    )
    randomise_(model).eval()
    with pytest.raises(UnsupportedModelError, match="found no"):
        fb.patch_model(model)  # no trunk pairformer here
    report = fb.patch_model(model, stacks=("confidence", "affinity"))
    assert [(e.stack, e.block, e.kind) for e in report.entries] == [
        ("confidence", 0, "triangle"),
        ("confidence", 0, "triangle"),
        ("confidence", 0, "single"),
        ("confidence", 1, "triangle"),
        ("confidence", 1, "triangle"),
        ("confidence", 1, "single"),
        ("affinity", 0, "triangle"),
        ("affinity", 0, "triangle"),
    ]
    stack = model.confidence_module.pairformer_stack
    s, z, mask, pair_mask = inputs(n=9, lengths=(9, 6))
    out = run(stack, s, z, mask, pair_mask)
    fb.unpatch_model(model)
    ref = run(stack, s, z, mask, pair_mask)
    assert max(rel_err(o, r) for o, r in zip(out, ref)) <= 1e-5


def test_bf16_autocast_close_to_host():
    stack = make_stack(n_blocks=1)
    s, z, mask, pair_mask = inputs(n=9, lengths=(7,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = run(stack, s, z, mask, pair_mask)
        fb.patch_model(stack)
        out = run(stack, s, z, mask, pair_mask)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype
        assert rel_err(o.float(), r.float()) <= 3e-2
