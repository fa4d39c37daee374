"""patch_model / unpatch_model on real Protenix modules (CPU, fp32): what only protenix has. What every
host does alike (exact == host, unpatch, errors, selections, lowrank, bf16, state dicts) is
parametrised over the hosts in ``test_patch_hosts.py``; the stacks are ``host_stacks.PROTENIX``.

The host modules are built from the installed ``protenix`` package (2.0.0, installed with
``pip install --no-deps`` plus requirements-hosts.txt); the file is skipped without it. Protenix
zero-initialises its output projections and gates, so every parameter is re-randomised.
"""

import pytest
import torch
from host_stacks import PROTENIX
from torch import nn

if PROTENIX.skip:
    pytest.skip(PROTENIX.skip, allow_module_level=True)

from host_models import randomise_
from naive import rel_err
from protenix.model.modules.pairformer import MSAModule, PairformerStack, TemplateEmbedder

import pairformer_fb as fb
from pairformer_fb.hosts import UnsupportedModelError, detect_host
from pairformer_fb.patching.patching import patched_modules

HEADS = PROTENIX.widths["heads"]


make_stack, inputs = PROTENIX.make_stack, PROTENIX.inputs


def run(stack, *inputs, **kwargs):
    """``(s, z)`` of one forward on the inputs as ``inputs`` returns them (``host_stacks.PROTENIX.run``)."""
    return PROTENIX.run(stack, inputs, **kwargs)


def test_parameters_are_shared_not_copied():
    stack = make_stack(n_blocks=1)
    block = stack.blocks[0]
    tri, apb = block.tri_att_start, block.attention_pair_bias
    fb.patch_model(stack)
    ours_tri, ours_apb = block.tri_att_start.flash_bias, block.attention_pair_bias.flash_bias
    pairs = [
        # (the triangle attentions' own parameters: test_patch_hosts.py)
        (ours_apb.layer_norm_s.weight, apb.layernorm_a.weight),
        (ours_apb.layer_norm_z.bias, apb.layernorm_z.bias),
        (ours_apb.linear_z.weight, apb.linear_nobias_z.weight),
        (ours_apb.linear_q.bias, apb.attention.linear_q.bias),
        (ours_apb.linear_o.weight, apb.attention.linear_o.weight),
    ]
    for ours, host in pairs:
        assert ours is host and ours.data_ptr() == host.data_ptr()
    # the host's bias-free linears stay bias-free in our modules
    assert ours_tri.linear_g.bias is None and ours_tri.linear_o.bias is None and ours_apb.linear_k.bias is None
    assert ours_tri.node == "starting" and block.tri_att_end.flash_bias.node == "starting"  # the block transposes
    # an in-place update of a host parameter is seen by the patched module
    s, z, mask = inputs(n=7)
    with torch.no_grad():
        before = block.tri_att_start(z, mask)
        tri.mha.linear_o.weight.mul_(2.0)
        after = block.tri_att_start(z, mask)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-6)  # linear_o has no bias
    # module conversions reach the host module too (it is unregistered but shares the objects)
    stack.to(torch.float64)
    assert tri.linear.weight is ours_tri.linear_b.weight and tri.linear.weight.dtype == torch.float64


def test_v2_width_hidden_scale_up():
    """Protenix v2 layout: hidden_scale_up gives the triangle attention c_z // 32 heads."""
    stack = make_stack(n_blocks=1, c_z=64, hidden_scale_up=True)
    assert stack.blocks[0].tri_att_start.mha.no_heads == 2
    s, z, mask = inputs(n=9, c_z=64, lengths=(7,))
    ref = run(stack, s, z, mask)
    fb.patch_model(stack)
    out = run(stack, s, z, mask)
    assert max(rel_err(o, r) for o, r in zip(out, ref)) <= 1e-5


def test_host_specific_errors():
    """(The errors every host shares: test_patch_hosts.py.) A model of no host; Protenix's own
    triangle_attention switch is still checked by the patched model."""
    with pytest.raises(UnsupportedModelError, match="none of the supported hosts"):
        fb.patch_model(nn.Sequential(nn.Linear(4, 4)))
    stack = make_stack(n_blocks=1)
    fb.patch_model(stack)
    with pytest.raises(ValueError, match="triangle_attention"):
        run(stack, *inputs(n=5), triangle_attention="flash")


def test_stack_selection_msa_and_template():
    """The MSA module's and the template embedder's Pairformer blocks are patched only when
    their stacks are selected; each replaced module computes its host module's function."""
    torch.manual_seed(0)
    model = nn.Module()
    model.msa_module = MSAModule(n_blocks=2, c_m=8, c_z=16, c_s_inputs=8, msa_configs={})
    model.template_embedder = TemplateEmbedder(n_blocks=1, c=16, c_z=16)
    model.pairformer_stack = PairformerStack(n_blocks=1, n_heads=HEADS, c_z=16, c_s=32)
    randomise_(model).eval()
    assert detect_host(model) == "protenix"
    report = fb.patch_model(model)
    assert {e.stack for e in report.entries} == {"pairformer"} and len(report) == 3
    fb.unpatch_model(model)
    report = fb.patch_model(model, stacks=("msa", "template"), blocks=[1])
    assert [(e.stack, e.block, e.path) for e in report.entries] == [
        ("msa", 1, "msa_module.blocks.1.pair_stack.tri_att_start"),
        ("msa", 1, "msa_module.blocks.1.pair_stack.tri_att_end"),
    ]
    fb.unpatch_model(model)
    report = fb.patch_model(model, stacks=("msa", "template"))
    assert sorted({(e.stack, e.block) for e in report.entries}) == [("msa", 0), ("msa", 1), ("template", 0)]
    _, z, mask = inputs(n=9, c_z=16, c_s=4, lengths=(6,))
    for wrapper in patched_modules(model).values():
        with torch.no_grad():
            assert rel_err(wrapper(z, mask, chunk_size=3), wrapper.host_module(z, mask)) <= 1e-5
