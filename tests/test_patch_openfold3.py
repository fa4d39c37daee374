"""patch_model / unpatch_model on real OpenFold3 modules (CPU, fp32): what only openfold3 has. What every
host does alike (exact == host, unpatch, errors, selections, lowrank, bf16, state dicts) is
parametrised over the hosts in ``test_patch_hosts.py``; the stacks are ``host_stacks.OPENFOLD3``.

The host modules are built from the installed ``openfold3`` package (0.5.0, installed with
``pip install --no-deps`` plus gemmi, ml-collections, absl-py, biotite); the file is skipped
without it. OpenFold3 zero-initialises its output projections and gates, so every parameter is
re-randomised.
"""

import pytest
import torch
from host_stacks import OPENFOLD3
from torch import nn

if OPENFOLD3.skip:
    pytest.skip(OPENFOLD3.skip, allow_module_level=True)

from host_models import randomise_
from naive import rel_err
from openfold3.core.model.latent.base_blocks import PairBlock
from openfold3.core.model.layers.triangular_attention import TriangleAttention

import pairformer_fb as fb
from pairformer_fb.hosts import UnsupportedModuleError, detect_host
from pairformer_fb.patching.patching import patched_modules

C_Z, C_S = OPENFOLD3.widths["c_z"], OPENFOLD3.widths["c_s"]

# the host's attention enters torch.amp.autocast("cuda") unconditionally, which warns on CPU
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


make_stack, inputs = OPENFOLD3.make_stack, OPENFOLD3.inputs


def run(stack, *inputs, **kwargs):
    """``(s, z)`` of one forward on the inputs as ``inputs`` returns them (``host_stacks.OPENFOLD3.run``)."""
    return OPENFOLD3.run(stack, inputs, **kwargs)


def test_ending_node_takes_the_bias_from_the_untransposed_pair():
    """OpenFold3's tri_att_end (transpose_bias=True) is our ending node with ending_bias=
    "untransposed"; the "transposed" convention (Boltz / Protenix) gives a different result."""
    stack = make_stack(n_blocks=1)
    pair_block = stack.blocks[0].pair_stack
    host = pair_block.tri_att_end
    _, z, _, pair_mask = inputs(n=11, lengths=(8,))
    zt, mt = z.transpose(-2, -3), pair_mask.transpose(-1, -2)  # as PairBlock.tri_att_start_end calls it
    with torch.no_grad():
        ref = host(zt, mask=mt, transpose_bias=True)
    fb.patch_model(stack, kinds=("triangle",))
    wrapper = pair_block.tri_att_end
    ours = wrapper.flash_bias
    assert (ours.node, ours.ending_bias) == ("ending", "untransposed") and wrapper.transpose_io
    with torch.no_grad():
        out = wrapper(zt, mask=mt, transpose_bias=True)
        assert rel_err(out, ref) <= 1e-5
        # our module on the untransposed z gives the same update, in z's orientation
        assert rel_err(ours(z, pair_mask).transpose(-2, -3), ref) <= 1e-5
        ours.ending_bias = "transposed"  # the other hosts' convention: not OpenFold3's function
        assert rel_err(wrapper(zt, mask=mt, transpose_bias=True), ref) > 1e-2
        ours.ending_bias = "untransposed"
        # a call with the other transpose_bias runs the host's own code
        other = host(zt, mask=mt, transpose_bias=False)
        assert rel_err(other, ref) > 1e-2
        assert torch.equal(wrapper(zt, mask=mt, transpose_bias=False), other)


@pytest.mark.parametrize("transpose_bias", [False, True])
def test_ending_node_class_both_transpose_bias(transpose_bias):
    """starting=False (TriangleAttentionEndingNode, used by no OpenFold3 block) maps to our
    ending node with "transposed" / "untransposed" for transpose_bias False / True."""
    torch.manual_seed(0)
    pair_block = PairBlock(
        c_z=C_Z,
        c_hidden_mul=8,
        c_hidden_pair_att=8,
        no_heads_pair=2,
        transition_type="swiglu",
        transition_n=2,
        pair_dropout=0.0,
        fuse_projection_weights=False,
        inf=1e9,
    )
    host = TriangleAttention(C_Z, 8, 2, starting=False, inf=1e9)
    randomise_(host)
    attr = "tri_att_end" if transpose_bias else "tri_att_start"
    setattr(pair_block, attr, host)
    _, z, _, pair_mask = inputs(n=9, lengths=(6,))
    with torch.no_grad():
        ref = host(z, mask=pair_mask, transpose_bias=transpose_bias, chunk_size=4)
    fb.patch_model(pair_block, host="openfold3", kinds=("triangle",))
    wrapper = getattr(pair_block, attr)
    assert wrapper.flash_bias.ending_bias == ("untransposed" if transpose_bias else "transposed")
    assert not wrapper.transpose_io
    with torch.no_grad():
        assert rel_err(wrapper(z, mask=pair_mask, transpose_bias=transpose_bias, chunk_size=4), ref) <= 1e-5


def test_parameters_are_shared_not_copied():
    stack = make_stack(n_blocks=1)
    block = stack.blocks[0]
    tri, apb = block.pair_stack.tri_att_start, block.attn_pair_bias
    fb.patch_model(stack)
    ours_tri, ours_apb = block.pair_stack.tri_att_start.flash_bias, block.attn_pair_bias.flash_bias
    pairs = [
        # (the triangle attentions' own parameters: test_patch_hosts.py)
        (ours_apb.layer_norm_s.weight, apb.layer_norm_a.weight),
        (ours_apb.layer_norm_z.bias, apb.layer_norm_z.bias),
        (ours_apb.linear_z.weight, apb.linear_z.weight),
        (ours_apb.linear_q.bias, apb.mha.linear_q.bias),
        (ours_apb.linear_o.weight, apb.mha.linear_o.weight),
        (ours_apb.linear_g.weight, apb.mha.linear_g.weight),
    ]
    for ours, host in pairs:
        assert ours is host and ours.data_ptr() == host.data_ptr()
    # the host's bias-free linears stay bias-free in our modules (OpenFold3's triangle gate and
    # output projections have no bias)
    assert ours_tri.linear_g.bias is None and ours_tri.linear_o.bias is None and ours_apb.linear_k.bias is None
    assert ours_tri.node == "starting" and (ours_tri.n_heads, ours_tri.head_dim) == (2, 8)
    assert (ours_apb.n_heads, ours_apb.head_dim) == (4, 8)
    # an in-place update of a host parameter is seen by the patched module
    _, z, _, pair_mask = inputs(n=7)
    with torch.no_grad():
        before = block.pair_stack.tri_att_start(z, pair_mask)
        tri.mha.linear_o.weight.mul_(2.0)
        after = block.pair_stack.tri_att_start(z, pair_mask)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-6)  # linear_o has no bias
    # module conversions reach the host module too (it is unregistered but shares the objects)
    stack.to(torch.float64)
    assert tri.linear_z.weight is ours_tri.linear_b.weight and tri.linear_z.weight.dtype == torch.float64


def test_single_attention_alone_broadcast_mask_and_no_mask():
    stack = make_stack(n_blocks=1)
    apb = stack.blocks[0].attn_pair_bias
    s, z, single_mask, _ = inputs(n=9, lengths=(9, 5))
    with torch.no_grad():
        refs = [apb(a=s, z=z, mask=m, use_high_precision_attention=True) for m in (single_mask, single_mask[1], None)]
    report = fb.patch_model(stack, kinds=("single",))
    assert [e.kind for e in report.entries] == ["single"]
    wrapper = stack.blocks[0].attn_pair_bias
    with torch.no_grad():
        outs = [
            wrapper(a=s, z=z, mask=m, use_high_precision_attention=True) for m in (single_mask, single_mask[1], None)
        ]
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) <= 1e-5


def test_host_specific_errors():
    """(The errors every host shares: test_patch_hosts.py.) OpenFold3 modules with an inf that
    would not mask to weight 0, or a bias projection in another precision, are refused."""
    with pytest.raises(UnsupportedModuleError, match="inf=100000 [(]"):
        fb.patch_model(make_stack(n_blocks=1, inf=1e5))
    stack = make_stack(n_blocks=1)
    stack.blocks[0].pair_stack.tri_att_end.linear_z.precision = torch.float32
    with pytest.raises(UnsupportedModuleError, match="precision"):
        fb.patch_model(stack)
    assert not patched_modules(stack)  # a failed patch leaves the model untouched


def test_stack_selection_template_and_confidence():
    """The template stack's and the confidence head's Pairformer blocks are patched only when
    their stacks are selected; the patched template stack computes its host function."""
    from openfold3.core.model.heads.prediction_heads import PairformerEmbedding
    from openfold3.core.model.latent.template_module import TemplatePairStack

    torch.manual_seed(0)
    model = nn.Module()
    model.template_pair_stack = TemplatePairStack(
        c_t=C_Z,
        c_hidden_tri_att=8,
        c_hidden_tri_mul=8,
        no_blocks=2,
        no_heads=2,
        transition_type="relu",
        pair_transition_n=2,
        dropout_rate=0.25,
        tri_mul_first=False,
        fuse_projection_weights=False,
        blocks_per_ckpt=None,
        ckpt_per_template=False,
        inf=1e9,
    )
    model.pairformer_stack = make_stack(n_blocks=1)
    model.head = PairformerEmbedding(
        pairformer=dict(
            c_s=C_S,
            c_z=C_Z,
            c_hidden_pair_bias=8,
            no_heads_pair_bias=4,
            c_hidden_mul=8,
            c_hidden_pair_att=8,
            no_heads_pair=2,
            no_blocks=1,
            transition_type="swiglu",
            transition_n=2,
            pair_dropout=0.25,
            fuse_projection_weights=False,
            blocks_per_ckpt=None,
            inf=1e9,
        ),
        c_s_input=C_S,
        c_z=C_Z,
        min_bin=3.25,
        max_bin=50.75,
        no_bin=39,
        inf=1e8,
    )
    randomise_(model).eval()
    assert detect_host(model) == "openfold3"
    report = fb.patch_model(model)
    assert [e.path for e in report.entries] == [
        "pairformer_stack.blocks.0.pair_stack.tri_att_start",
        "pairformer_stack.blocks.0.pair_stack.tri_att_end",
        "pairformer_stack.blocks.0.attn_pair_bias",
    ]
    fb.unpatch_model(model)
    report = fb.patch_model(model, stacks=("confidence",))
    assert [(e.stack, e.block, e.path) for e in report.entries] == [
        ("confidence", 0, "head.pairformer_stack.blocks.0.pair_stack.tri_att_start"),
        ("confidence", 0, "head.pairformer_stack.blocks.0.pair_stack.tri_att_end"),
        ("confidence", 0, "head.pairformer_stack.blocks.0.attn_pair_bias"),
    ]
    fb.unpatch_model(model)

    # the template stack: two templates, padded; triangles only (it has no single attention)
    g = torch.Generator().manual_seed(5)
    t = torch.randn(1, 2, 9, 9, C_Z, generator=g)
    token = torch.ones(1, 2, 9)
    token[:, 1, 6:] = 0
    mask = token[..., :, None] * token[..., None, :]
    with torch.no_grad():
        ref = model.template_pair_stack(t.clone(), mask, chunk_size=4)
    report = fb.patch_model(model, stacks=("template",))
    assert [(e.stack, e.block, e.node) for e in report.entries] == [
        ("template", 0, "starting"),
        ("template", 0, "ending"),
        ("template", 1, "starting"),
        ("template", 1, "ending"),
    ]
    with torch.no_grad():
        out = model.template_pair_stack(t.clone(), mask, chunk_size=4)
    assert rel_err(out, ref) <= 1e-5
