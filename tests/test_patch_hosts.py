"""patch_model / unpatch_model on the real trunk stacks of every host (CPU, fp32): what every host
must do alike, parametrised over the hosts (``host_stacks.py``). What only one host has (its
parameter sharing in detail, its own errors and stacks) is in ``test_patch_<host>.py``.

A host whose package cannot be imported is skipped with the reason."""

import sys

import pytest
import torch
from host_models import additive_pair, set_exact_factors
from host_stacks import HOST_STACKS, HostStack
from naive import rel_err
from torch import nn

import pairformer_fb as fb
from pairformer_fb.hosts import PatchedModule, UnsupportedModelError
from pairformer_fb.patching.patching import AlreadyPatchedError, patched_modules

# OpenFold3's attention enters torch.amp.autocast("cuda") unconditionally, which warns on CPU
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


@pytest.fixture(params=sorted(HOST_STACKS))
def hs(request) -> HostStack:
    host = HOST_STACKS[request.param]
    if host.skip:
        pytest.skip(host.skip)
    return host


@pytest.mark.parametrize("lengths", [None, (13, 9)], ids=["no-padding", "padding"])
@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
def test_exact_patch_reproduces_host_and_unpatch_is_bit_identical(hs, lengths, chunked):
    kwargs = hs.chunked if chunked else {}
    stack = hs.make_stack()
    inputs = hs.inputs(lengths=lengths)
    ref_s, ref_z = hs.run(stack, inputs, **kwargs)
    params_before = {id(p) for p in stack.parameters()}

    report = fb.patch_model(stack)
    assert report.host == hs.host and len(report) == 9 and report.params_added == 0
    assert [(e.block, e.kind, e.node) for e in report.entries[:3]] == [
        (0, "triangle", hs.nodes[0]),
        (0, "triangle", hs.nodes[1]),
        (0, "single", None),
    ]
    assert all(e.mode == "exact" and e.rank is None and e.stack == "pairformer" for e in report.entries)
    # no parameter added, none copied: the patched model holds exactly the host's objects
    assert {id(p) for p in stack.parameters()} == params_before
    out_s, out_z = hs.run(stack, inputs, **kwargs)
    assert rel_err(out_s, ref_s) <= 1e-5 and rel_err(out_z, ref_z) <= 1e-5
    # the host's other kernel switches compute the same function: ignored, not refused
    out2_s, out2_z = hs.run(stack, inputs, **hs.other_kernels, **kwargs)
    assert torch.equal(out2_s, out_s) and torch.equal(out2_z, out_z)

    restored = fb.unpatch_model(stack)
    assert len(restored) == 9 and not patched_modules(stack)
    back_s, back_z = hs.run(stack, inputs, **kwargs)
    assert torch.equal(back_s, ref_s) and torch.equal(back_z, ref_z)


def test_triangle_attentions_share_the_hosts_parameter_objects(hs):
    """Both triangle attentions of a block run on the host's own parameter objects (layer norm,
    bias projection, q / k / v / g / o); what else each host shares is in its own file."""
    stack = hs.make_stack(n_blocks=1)
    hosts = {node: hs.triangle(hs.blocks(stack)[0], node) for node in ("starting", "ending")}
    fb.patch_model(stack)
    for node, tri in hosts.items():
        ours = hs.triangle(hs.blocks(stack)[0], node).flash_bias
        pairs = [
            (ours.layer_norm.weight, tri.layer_norm.weight),
            (ours.layer_norm.bias, tri.layer_norm.bias),
            (ours.linear_b.weight, tri.get_submodule(hs.tri_bias_linear).weight),
        ] + [(getattr(ours, f"linear_{p}").weight, getattr(tri.mha, f"linear_{p}").weight) for p in "qkvgo"]
        for mine, theirs in pairs:
            assert mine is theirs and mine.data_ptr() == theirs.data_ptr(), node


def test_errors(hs):
    stack = hs.make_stack(n_blocks=1)
    fb.patch_model(stack)
    with pytest.raises(AlreadyPatchedError, match="already patched"):
        fb.patch_model(stack)
    fb.unpatch_model(stack)
    with pytest.raises(ValueError, match="no patched module"):
        fb.unpatch_model(stack)
    with pytest.raises(UnsupportedModelError, match="found no"):
        fb.patch_model(nn.Sequential(nn.Linear(4, 4)), host=hs.host)
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


def test_missing_host_package(hs, monkeypatch):
    for name in hs.package_modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match=f"pip install --no-deps {hs.host}"):
        fb.patch_model(nn.Linear(4, 4), host=hs.host)


def test_per_block_modes_and_selection(hs):
    stack = hs.make_stack()
    block0 = hs.blocks(stack)[0]
    report = fb.patch_model(stack, mode={"lowrank": [0], "exact": ...}, rank=3)
    modes = {(e.block, e.kind, e.node): (e.mode, e.rank) for e in report.entries}
    assert modes[(0, "triangle", hs.nodes[1])] == ("lowrank", 3) and modes[(2, "single", None)] == ("exact", None)
    assert [e.block for e in report.entries if e.params_added] == [0, 0, 0]
    fn_params = sum(
        p.numel()
        for m in patched_modules(stack).values()
        if m.flash_bias.factor_network is not None
        for p in m.flash_bias.factor_network.parameters()
    )
    assert report.params_added == fn_params > 0
    assert "lowrank" in str(report) and hs.path in str(report)
    inputs = hs.inputs(n=7, lengths=(5,))
    out_s, out_z = hs.run(stack, inputs)
    assert torch.isfinite(out_s).all() and torch.isfinite(out_z).all()
    # distill mode: the host's callers get the update; the loss is kept on the wrapper
    for wrapper in (hs.triangle(block0, "ending"), hs.single(block0)):
        wrapper.mode = "distill"
        hs.run(stack, inputs)
        assert wrapper.last_distill_loss is not None and wrapper.last_distill_loss.item() > 0
    fb.unpatch_model(stack)

    # a callable rule (None: leave the block alone), blocks= and kinds= selections
    report = fb.patch_model(stack, mode=lambda b: None if b == 1 else "exact")
    assert sorted({e.block for e in report.entries}) == [0, 2]
    blocks = hs.blocks(stack)
    assert isinstance(hs.triangle(blocks[0], "starting"), PatchedModule)
    assert not isinstance(hs.triangle(blocks[1], "starting"), PatchedModule)
    fb.unpatch_model(stack)
    report = fb.patch_model(stack, blocks=[2], kinds=("triangle",))
    assert [(e.block, e.kind, e.node) for e in report.entries] == [(2, "triangle", n) for n in hs.nodes]
    fb.unpatch_model(stack)
    report = fb.patch_model(stack, blocks=[1], kinds=("single",))
    assert [(e.block, e.kind) for e in report.entries] == [(1, "single")]
    assert isinstance(hs.single(blocks[1]), PatchedModule)
    fb.unpatch_model(stack)


def test_lowrank_with_an_exactly_low_rank_bias_reproduces_exact(hs):
    """The bias of an additive pair rep is exactly rank 2; each of block 0's three lowrank modules
    (as the host configures them: node, ending-node convention, widths) gets its factor network
    set to give it (``set_exact_factors``: from the same layer-normed pair rep as the dense bias,
    in the bias' orientation), so lowrank equals exact. Exact equals the host in
    ``test_exact_patch_reproduces_host...``. A perturbed factor network does differ."""
    stack = hs.make_stack(n_blocks=1)
    report = fb.patch_model(stack, mode="lowrank", factor_config=fb.FactorConfig(rank=2, depth=0))
    assert len(report) == 3 and all(e.rank == 2 for e in report.entries)
    block = hs.blocks(stack)[0]
    g = torch.Generator().manual_seed(3)
    n, c_z, c_s = 11, hs.widths["c_z"], hs.widths["c_s"]
    z = additive_pair(n, c_z, g)[None]
    s = torch.randn(1, n, c_s, generator=g)
    modules = {
        "starting": (hs.triangle(block, "starting").flash_bias, lambda m: m(z)),
        "ending": (hs.triangle(block, "ending").flash_bias, lambda m: m(z)),
        "single": (hs.single(block).flash_bias, lambda m: m(s, z)),
    }
    with torch.no_grad():
        for name, (ours, call) in modules.items():
            if name == "single":
                weight, pair = ours.linear_z.weight, ours.layer_norm_z(z[0])
            else:
                weight, pair = ours.linear_b.weight, ours._bias_orientation(ours.layer_norm(z[0]), None)[0]
            set_exact_factors(ours.factor_network, weight, pair)
            ours.mode = "lowrank"
            low = call(ours)
            ours.mode = "exact"
            exact = call(ours)
            assert rel_err(low, exact) <= 1e-5, name
            # not vacuous: doubling every head's key-dependent term (a query-only change would cancel)
            ours.mode = "lowrank"
            ours.factor_network.query_mlp[0].bias[1::2].add_(1.0)
            assert rel_err(call(ours), exact) > 1e-3, name


def test_bf16_autocast_close_to_host(hs):
    stack = hs.make_stack(n_blocks=1)
    inputs = hs.inputs(n=9, lengths=(7,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = hs.run(stack, inputs)
        fb.patch_model(stack)
        out = hs.run(stack, inputs)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype
        assert rel_err(o.float(), r.float()) <= 3e-2


def test_state_dict_keeps_the_host_keys_and_loads_a_host_checkpoint(hs):
    stack = hs.make_stack(n_blocks=2)
    inputs = hs.inputs(lengths=(13, 10))
    ref_s, ref_z = hs.run(stack, inputs)
    host_state = {k: v.clone() for k, v in stack.state_dict().items()}
    fb.patch_model(stack, mode={"lowrank": [0], "exact": ...}, rank=4)
    keys = set(stack.state_dict())
    added = keys - set(host_state)
    # the host's keys unchanged; the factor networks of the lowrank block 0 added under its modules
    block0 = hs.path.split("tri_att_start")[0]
    assert set(host_state) <= keys and added
    assert all(k.startswith(block0[: block0.index(".0.") + 3]) and ".factor_network." in k for k in added)
    # a host checkpoint (other weights) loads into the patched model under the host's own names
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in host_state.items()}
    missing, unexpected = stack.load_state_dict(other, strict=False)
    assert not unexpected and set(missing) == added
    fb.unpatch_model(stack)
    unpatched_out = hs.run(stack, inputs)
    stack.load_state_dict(host_state)
    back_s, back_z = hs.run(stack, inputs)
    assert torch.equal(back_s, ref_s) and torch.equal(back_z, ref_z)
    assert not torch.equal(unpatched_out[1], ref_z)  # the loaded weights reached the host modules
