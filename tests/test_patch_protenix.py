"""patch_model / unpatch_model on real Protenix modules (CPU, fp32).

The host modules are built from the installed ``protenix`` package (2.0.0, installed with
``pip install --no-deps`` plus requirements-hosts.txt); the file is skipped without it. Protenix
zero-initialises its output projections and gates, so every parameter is re-randomised.
"""

import os
import sys

import pytest
import torch
from torch import nn

# without CUDA, importing protenix would try to build its fused CUDA layer norm
os.environ.setdefault("LAYERNORM_TYPE", "torch")
try:
    from protenix.model.modules.pairformer import MSAModule, PairformerStack, TemplateEmbedder
except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
    pytest.skip(
        f"protenix cannot be imported ({type(e).__name__}: {e}); install it with "
        "pip install --no-deps protenix==2.0.0 -r requirements-hosts.txt",
        allow_module_level=True,
    )

from host_models import additive_pair, randomise_, set_exact_factors
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts import PatchedModule, UnsupportedModelError, detect_host
from pairformer_fb.patching.patching import AlreadyPatchedError, patched_modules

C_Z, C_S, HEADS = 32, 64, 4


def make_stack(n_blocks=3, c_z=C_Z, c_s=C_S, **kwargs) -> PairformerStack:
    torch.manual_seed(0)
    stack = PairformerStack(n_blocks=n_blocks, n_heads=HEADS, c_z=c_z, c_s=c_s, **kwargs)
    return randomise_(stack).eval()


def inputs(n=13, c_z=C_Z, c_s=C_S, lengths=None, seed=1):
    """s, z and the pair mask for a batch of len(lengths) (float 0/1 mask as Protenix has it;
    lengths=None: one element, no padding)."""
    g = torch.Generator().manual_seed(seed)
    batch = 1 if lengths is None else len(lengths)
    s = torch.randn(batch, n, c_s, generator=g)
    z = torch.randn(batch, n, n, c_z, generator=g)
    token = torch.ones(batch, n)
    for b, length in enumerate(lengths or []):
        token[b, length:] = 0
    return s, z, token[:, :, None] * token[:, None, :]


def run(stack, s, z, mask, **kwargs):
    with torch.no_grad():
        return stack(s.clone(), z.clone(), mask, **kwargs)


@pytest.mark.parametrize("lengths", [None, (13, 9)], ids=["no-padding", "padding"])
@pytest.mark.parametrize("kwargs", [{}, {"chunk_size": 4, "inplace_safe": True}], ids=["plain", "chunked-inplace"])
def test_exact_patch_reproduces_host_and_unpatch_is_bit_identical(lengths, kwargs):
    stack = make_stack()
    s, z, mask = inputs(lengths=lengths)
    ref_s, ref_z = run(stack, s, z, mask, **kwargs)
    params_before = {id(p) for p in stack.parameters()}

    report = fb.patch_model(stack)
    assert report.host == "protenix" and len(report) == 9 and report.params_added == 0
    assert {e.kind for e in report.entries} == {"triangle", "single"}
    assert all(e.mode == "exact" and e.rank is None for e in report.entries)
    # no parameter added, none copied: the patched model holds exactly the host's objects
    assert {id(p) for p in stack.parameters()} == params_before
    out_s, out_z = run(stack, s, z, mask, **kwargs)
    assert rel_err(out_s, ref_s) <= 1e-5 and rel_err(out_z, ref_z) <= 1e-5
    # the host's other kernel choices compute the same function: ignored, not refused
    out2_s, _ = run(stack, s, z, mask, triangle_attention="deepspeed", **kwargs)
    assert torch.equal(out2_s, out_s)

    restored = fb.unpatch_model(stack)
    assert len(restored) == 9 and not patched_modules(stack)
    back_s, back_z = run(stack, s, z, mask, **kwargs)
    assert torch.equal(back_s, ref_s) and torch.equal(back_z, ref_z)


def test_parameters_are_shared_not_copied():
    stack = make_stack(n_blocks=1)
    block = stack.blocks[0]
    tri, apb = block.tri_att_start, block.attention_pair_bias
    fb.patch_model(stack)
    ours_tri, ours_apb = block.tri_att_start.flash_bias, block.attention_pair_bias.flash_bias
    pairs = [
        (ours_tri.layer_norm.weight, tri.layer_norm.weight),
        (ours_tri.layer_norm.bias, tri.layer_norm.bias),
        (ours_tri.linear_b.weight, tri.linear.weight),
        (ours_tri.linear_q.weight, tri.mha.linear_q.weight),
        (ours_tri.linear_k.weight, tri.mha.linear_k.weight),
        (ours_tri.linear_v.weight, tri.mha.linear_v.weight),
        (ours_tri.linear_g.weight, tri.mha.linear_g.weight),
        (ours_tri.linear_o.weight, tri.mha.linear_o.weight),
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


def test_errors():
    stack = make_stack(n_blocks=1)
    fb.patch_model(stack)
    with pytest.raises(AlreadyPatchedError, match="already patched"):
        fb.patch_model(stack)
    fb.unpatch_model(stack)
    with pytest.raises(ValueError, match="no patched module"):
        fb.unpatch_model(stack)
    with pytest.raises(UnsupportedModelError, match="none of the supported hosts"):
        fb.patch_model(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(UnsupportedModelError, match="found no"):
        fb.patch_model(nn.Sequential(nn.Linear(4, 4)), host="protenix")
    with pytest.raises(ValueError, match="unknown host 'boltz2'"):
        fb.patch_model(stack, host="boltz2")
    with pytest.raises(ValueError, match="kinds"):
        fb.patch_model(stack, kinds=("triangles",))
    with pytest.raises(ValueError, match="stacks"):
        fb.patch_model(stack, stacks=("trunk",))
    with pytest.raises(ValueError, match="mode"):
        fb.patch_model(stack, mode="fast")
    with pytest.raises(ValueError, match="listed under both"):
        fb.patch_model(stack, mode={"lowrank": [0], "exact": [0]})
    with pytest.raises(ValueError, match="s_inputs"):
        fb.patch_model(stack, mode="lowrank", factor_config=fb.FactorConfig(rank=4, use_s_inputs=True, c_s_inputs=8))
    assert not patched_modules(stack)  # a failed patch leaves the model untouched
    fb.patch_model(stack)
    with pytest.raises(ValueError, match="triangle_attention"):
        run(stack, *inputs(n=5), triangle_attention="flash")


def test_missing_host_package(monkeypatch):
    for name in (
        "protenix.model.modules.pairformer",
        "protenix.model.modules.transformer",
        "protenix.model.triangular.triangular",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match="pip install --no-deps protenix"):
        fb.patch_model(nn.Linear(4, 4), host="protenix")


def test_per_block_modes_and_selection():
    stack = make_stack()
    report = fb.patch_model(stack, mode={"lowrank": [0], "exact": ...}, rank=3)
    modes = {(e.block, e.path.rsplit(".", 1)[1]): (e.mode, e.rank) for e in report.entries}
    assert modes[(0, "tri_att_end")] == ("lowrank", 3) and modes[(2, "attention_pair_bias")] == ("exact", None)
    assert [e.block for e in report.entries if e.params_added] == [0, 0, 0]
    fn_params = sum(
        p.numel()
        for m in patched_modules(stack).values()
        if m.flash_bias.factor_network is not None
        for p in m.flash_bias.factor_network.parameters()
    )
    assert report.params_added == fn_params > 0
    assert "lowrank" in str(report) and "blocks.0.tri_att_start" in str(report)
    s, z, mask = inputs(n=7, lengths=(5,))
    out_s, out_z = run(stack, s, z, mask)
    assert torch.isfinite(out_s).all() and torch.isfinite(out_z).all()
    # distill mode: the host's callers get the update; the loss is kept on the wrapper
    wrapper = stack.blocks[0].tri_att_start
    wrapper.mode = "distill"
    distill_s, _ = run(stack, s, z, mask)
    assert wrapper.last_distill_loss is not None and wrapper.last_distill_loss.item() > 0
    fb.unpatch_model(stack)

    # a callable rule (None: leave the block alone), blocks= and kinds= selections
    report = fb.patch_model(stack, mode=lambda b: None if b == 1 else "exact")
    assert sorted({e.block for e in report.entries}) == [0, 2]
    assert isinstance(stack.blocks[0].tri_att_start, PatchedModule)
    assert not isinstance(stack.blocks[1].tri_att_start, PatchedModule)
    fb.unpatch_model(stack)
    report = fb.patch_model(stack, blocks=[2], kinds=("triangle",))
    assert [(e.block, e.kind) for e in report.entries] == [(2, "triangle"), (2, "triangle")]
    fb.unpatch_model(stack)


def test_lowrank_with_an_exactly_low_rank_bias_reproduces_exact_and_host():
    """The bias of an additive pair rep is exactly rank 2; the factor network is set to give it
    (from the same layer-normed pair rep as the dense bias), so lowrank == exact == host."""
    stack = make_stack(n_blocks=1)
    block = stack.blocks[0]
    hosts = {"tri_att_start": block.tri_att_start, "attention_pair_bias": block.attention_pair_bias}
    g = torch.Generator().manual_seed(3)
    n = 11
    z = additive_pair(n, C_Z, g)[None]
    s = torch.randn(1, n, C_S, generator=g)
    with torch.no_grad():
        ref_tri = hosts["tri_att_start"](z, None)
        ref_apb = hosts["attention_pair_bias"](a=s, s=None, z=z)
    report = fb.patch_model(stack, mode="lowrank", blocks=[0], factor_config=fb.FactorConfig(rank=2, depth=0))
    assert all(e.rank == 2 for e in report.entries)
    tri, apb = block.tri_att_start, block.attention_pair_bias
    with torch.no_grad():
        set_exact_factors(
            tri.flash_bias.factor_network, tri.flash_bias.linear_b.weight, tri.flash_bias.layer_norm(z[0])
        )
        set_exact_factors(
            apb.flash_bias.factor_network, apb.flash_bias.linear_z.weight, apb.flash_bias.layer_norm_z(z[0])
        )
        low_tri, low_apb = tri(z, None), apb(a=s, s=None, z=z)
        tri.mode = apb.mode = "exact"
        exact_tri, exact_apb = tri(z, None), apb(a=s, s=None, z=z)
    assert rel_err(exact_tri, ref_tri) <= 1e-5 and rel_err(exact_apb, ref_apb) <= 1e-5
    assert rel_err(low_tri, exact_tri) <= 1e-5 and rel_err(low_apb, exact_apb) <= 1e-5
    # and the construction is not vacuous: a perturbed factor network does differ
    with torch.no_grad():
        tri.mode = "lowrank"
        # doubles the key-dependent term v_k of every head (a query-only change would cancel)
        tri.flash_bias.factor_network.query_mlp[0].bias[1::2].add_(1.0)
        assert rel_err(tri(z, None), exact_tri) > 1e-3


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


def test_bf16_autocast_close_to_host():
    stack = make_stack(n_blocks=1)
    s, z, mask = inputs(n=9, lengths=(7,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = run(stack, s, z, mask)
        fb.patch_model(stack)
        out = run(stack, s, z, mask)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype
        assert rel_err(o.float(), r.float()) <= 3e-2


def test_state_dict_keeps_the_host_keys_and_loads_a_host_checkpoint():
    stack = make_stack(n_blocks=2)
    s, z, mask = inputs(lengths=(13, 10))
    ref_s, ref_z = run(stack, s, z, mask)
    host_state = {k: v.clone() for k, v in stack.state_dict().items()}
    fb.patch_model(stack, mode={"lowrank": [0], "exact": ...}, rank=4)
    keys = set(stack.state_dict())
    added = keys - set(host_state)
    # the host's keys unchanged; the factor networks of the lowrank block 0 added under its modules
    assert set(host_state) <= keys and added
    assert all(k.startswith("blocks.0.") and ".factor_network." in k for k in added)
    # a host checkpoint (other weights) loads into the patched model under the host's own names
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in host_state.items()}
    missing, unexpected = stack.load_state_dict(other, strict=False)
    assert not unexpected and set(missing) == added
    fb.unpatch_model(stack)
    unpatched_out = run(stack, s, z, mask)
    stack.load_state_dict(host_state)
    back_s, back_z = run(stack, s, z, mask)
    assert torch.equal(back_s, ref_s) and torch.equal(back_z, ref_z)
    assert not torch.equal(unpatched_out[1], ref_z)  # the loaded weights reached the host modules
