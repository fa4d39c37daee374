"""patch_model / unpatch_model on real Boltz-2 modules (CPU, fp32): what only boltz has. What every
host does alike (exact == host, unpatch, errors, selections, lowrank, bf16, state dicts) is
parametrised over the hosts in ``test_patch_hosts.py``; the stacks are ``host_stacks.BOLTZ``.

The host modules are built from the installed ``boltz`` package (2.2.1, installed with
``pip install --no-deps boltz==2.2.1 einops``); the file is skipped without it. Boltz
zero-initialises its output projections, so every parameter is re-randomised.
"""

import pytest
import torch
from host_stacks import BOLTZ
from torch import nn

if BOLTZ.skip:
    pytest.skip(BOLTZ.skip, allow_module_level=True)

from boltz.model.layers.pairformer import PairformerModule
from boltz.model.layers.triangular_attention.attention import TriangleAttentionEndingNode
from boltz.model.modules.affinity import AffinityModule
from boltz.model.modules.confidencev2 import ConfidenceModule
from boltz.model.modules.trunkv2 import MSAModule, TemplateModule
from host_models import randomise_
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts import UnsupportedModelError, UnsupportedModuleError, detect_host
from pairformer_fb.patching.patching import patched_modules

C_Z, C_S, HEADS, TRI_HEADS, TRI_WIDTH = (BOLTZ.widths[k] for k in ("c_z", "c_s", "heads", "tri_heads", "tri_width"))


make_stack, inputs = BOLTZ.make_stack, BOLTZ.inputs


def run(stack, *inputs, **kwargs):
    """``(s, z)`` of one forward on the inputs as ``inputs`` returns them (``host_stacks.BOLTZ.run``)."""
    return BOLTZ.run(stack, inputs, **kwargs)


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
        # (the triangle attentions' own parameters: test_patch_hosts.py)
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


def test_host_specific_errors():
    """(The errors every host shares: test_patch_hosts.py.) Boltz modules whose inf would not
    mask to weight 0 are refused, nothing patched; the single attention can be left alone."""
    stack = make_stack(n_blocks=1)
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
