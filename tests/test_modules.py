"""The FlashBias modules against independent float64 implementations of AF2/AF3 Algorithms
13/14 (AF3 14/15) and 24 (tests/af3_reference.py), in every mode, with random weights
(including the output projections, which hosts zero-initialise and which would hide errors)."""

import copy
import math
import os

import af3_reference as ref
import pytest
import torch
from naive import rel_err

from pairformer_fb import FactorConfig, FlashBiasAttentionPairBias, FlashBiasTriangleAttention

TRI = dict(c_z=16, n_heads=2, head_dim=8)
APB = dict(c_s=24, c_z=16, n_heads=3)  # head_dim 8
CONVENTIONS = {
    "starting": dict(node="starting"),
    "ending_transposed": dict(node="ending", ending_bias="transposed"),
    "ending_untransposed": dict(node="ending", ending_bias="untransposed"),
}
C_S_INPUTS = 5
FACTORS = FactorConfig(rank=4, width=8, depth=1, use_s_inputs=True, c_s_inputs=C_S_INPUTS)


def randomize_(module, seed=0):
    """Random weights everywhere: matrices ~ N(0, 1/fan_in), layer-norm scales around 1,
    biases ~ N(0, 0.2^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return module


def assert_grads_close(got, expected, names, tol, floor_fraction=1e-2):
    """Each gradient within tol of the expected one, relative to its norm, or to floor_fraction
    of the largest gradient norm for gradients that vanish analytically (from a per-head
    constant added to every logit of a row, e.g. the pair layer norm's shift in attention with
    pair bias, or the key factor network's output bias)."""
    floor = floor_fraction * max(b.double().norm().item() for b in expected)
    for name, a, b in zip(names, got, expected):
        assert a is not None and a.shape == b.shape, name
        err = (a.double() - b.double()).norm().item()
        assert err <= tol * max(b.double().norm().item(), floor), (name, err, b.double().norm().item())


def triangle(convention, seed=0, **kw):
    return randomize_(FlashBiasTriangleAttention(**TRI, **CONVENTIONS[convention], **kw), seed)


def pair_bias_attention(seed=0, **kw):
    return randomize_(FlashBiasAttentionPairBias(**APB, **kw), seed)


def token_mask(batch, n, seed=0):
    """Token mask with a different number of padded tokens (at the end) per batch element."""
    m = torch.ones(*batch, n, dtype=torch.bool)
    flat = m.view(-1, n)
    for b in range(flat.shape[0]):
        flat[b, n - 1 - b % 3 :] = False
    return m


def pair_mask(kind, batch, n, seed=0):
    if kind is None:
        return None
    if kind == "padded":  # the hosts' pair mask: padded tokens' rows and columns are masked
        m = token_mask(batch, n, seed)
        return m[..., :, None] & m[..., None, :]
    g = torch.Generator().manual_seed(seed)  # "random": not symmetric, a masked row and column
    m = torch.rand(*batch, n, n, generator=g) > 0.3
    m[..., 1, :] = False
    m[..., :, 2] = False
    return m


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference_triangle(module, z, mask, convention, bias_term=None):
    spec = CONVENTIONS[convention]
    return ref.triangle_attention(
        z,
        mask,
        ref.params64(module),
        n_heads=TRI["n_heads"],
        node=spec["node"],
        ending_bias=spec.get("ending_bias"),
        bias_term=bias_term,
    )


def lowrank_reference_triangle(module, z, mask, convention, s_inputs):
    spec = CONVENTIONS[convention]
    term = ref.triangle_lowrank_bias_term(
        z,
        mask,
        ref.params64(module),
        n_heads=TRI["n_heads"],
        node=spec["node"],
        ending_bias=spec.get("ending_bias"),
        s_inputs=s_inputs,
    )
    return reference_triangle(module, z, mask, convention, bias_term=term)


TRIANGLE_CASES = {
    # name: (batch shape, N, mask kind, chunk_size)
    "odd_n_no_mask": ((), 7, None, None),
    "padded_rows_batch": ((2,), 6, "padded", None),
    "random_mask_batch_dims_chunked": ((1, 2), 9, "random", 4),
}


# ------------------------------------------------------------------------------------------
# Triangle attention
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(TRIANGLE_CASES))
@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_exact_matches_the_algorithm(convention, case):
    batch, n, mask_kind, chunk = TRIANGLE_CASES[case]
    module = triangle(convention)
    module.chunk_budget_bytes = 0  # chunk_size exactly
    z, mask = randn(*batch, n, n, TRI["c_z"]), pair_mask(mask_kind, batch, n)
    out = module(z, mask, chunk_size=chunk)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert rel_err(out, reference_triangle(module, z, mask, convention)) < 1e-5


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_exact_gradients_match_the_algorithm(convention):
    module = triangle(convention, seed=1)
    z = randn(2, 6, 6, TRI["c_z"], seed=1).requires_grad_()
    mask = pair_mask("random", (2,), 6)
    cot = randn(2, 6, 6, TRI["c_z"], seed=2)
    module.chunk_budget_bytes = 0  # chunk_size exactly
    out = module(z, mask, chunk_size=4)
    params = dict(module.named_parameters())
    got = torch.autograd.grad(out, [z, *params.values()], cot)

    z64 = z.detach().double().requires_grad_()
    p64 = {name: t.detach().double().requires_grad_() for name, t in params.items()}
    spec = CONVENTIONS[convention]
    expected_out = ref.triangle_attention(
        z64, mask, p64, n_heads=TRI["n_heads"], node=spec["node"], ending_bias=spec.get("ending_bias")
    )
    expected = torch.autograd.grad(expected_out, [z64, *p64.values()], cot.double())
    assert_grads_close(got, expected, ["z", *params], 1e-4)


def test_ending_conventions_differ_and_transposed_is_starting_on_transposed_z():
    start = triangle("starting")
    transposed = triangle("ending_transposed")
    untransposed = triangle("ending_untransposed")
    z, mask = randn(7, 7, TRI["c_z"]), pair_mask("random", (), 7)
    a, b = transposed(z, mask), untransposed(z, mask)
    assert rel_err(a, b) > 0.05  # same weights (same seed), different bias indexing
    # how OpenFold / Boltz / Protenix run the ending node: transpose z and mask, starting-node
    # code, transpose back
    hosts = start(z.transpose(0, 1), mask.transpose(0, 1)).transpose(0, 1)
    assert rel_err(a, hosts) < 1e-6


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_lowrank_matches_the_algorithm_with_the_factor_bias(convention):
    module = triangle(convention, seed=3, factor_config=FACTORS, mode="lowrank")
    with torch.no_grad():  # lowrank never computes the dense bias
        module.linear_b.weight.fill_(float("nan"))
    z, mask = randn(2, 7, 7, TRI["c_z"], seed=3), pair_mask("random", (2,), 7)
    s_inputs = randn(2, 7, C_S_INPUTS, seed=4)
    module.chunk_budget_bytes = 0  # chunk_size exactly
    out = module(z, mask, s_inputs=s_inputs, chunk_size=3)
    expected = lowrank_reference_triangle(module, z, mask, convention, s_inputs)
    assert torch.isfinite(out).all()
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("convention", list(CONVENTIONS))
@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_triangle_mask_none_equals_all_ones(convention, mode):
    module = triangle(convention, factor_config=FACTORS, mode=mode)
    z, s_inputs = randn(6, 6, TRI["c_z"]), randn(6, C_S_INPUTS)
    ones = torch.ones(6, 6, dtype=torch.bool)
    torch.testing.assert_close(
        module(z, None, s_inputs=s_inputs), module(z, ones, s_inputs=s_inputs), rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------------------------------
# Attention with pair bias
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "batch,n,masked,layer_norm_s",
    [
        ((), 7, False, True),
        ((2,), 6, True, True),
        ((1, 2), 5, True, False),
    ],
)
def test_attention_pair_bias_exact_matches_the_algorithm(batch, n, masked, layer_norm_s):
    module = pair_bias_attention(layer_norm_s=layer_norm_s)
    s, z = randn(*batch, n, APB["c_s"]), randn(*batch, n, n, APB["c_z"], seed=1)
    mask = token_mask(batch, n) if masked else None
    out = module(s, z, mask)
    assert out.shape == s.shape
    expected = ref.attention_pair_bias(s, z, mask, ref.params64(module), n_heads=APB["n_heads"])
    assert rel_err(out, expected) < 1e-5


def test_attention_pair_bias_exact_gradients_match_the_algorithm():
    module = pair_bias_attention(seed=1)
    s = randn(2, 6, APB["c_s"], seed=1).requires_grad_()
    z = randn(2, 6, 6, APB["c_z"], seed=2).requires_grad_()
    mask, cot = token_mask((2,), 6), randn(2, 6, APB["c_s"], seed=3)
    params = dict(module.named_parameters())
    got = torch.autograd.grad(module(s, z, mask), [s, z, *params.values()], cot)
    s64, z64 = (t.detach().double().requires_grad_() for t in (s, z))
    p64 = {name: t.detach().double().requires_grad_() for name, t in params.items()}
    expected_out = ref.attention_pair_bias(s64, z64, mask, p64, n_heads=APB["n_heads"])
    expected = torch.autograd.grad(expected_out, [s64, z64, *p64.values()], cot.double())
    assert_grads_close(got, expected, ["s", "z", *params], 1e-4)


def test_attention_pair_bias_lowrank_matches_the_algorithm_with_the_factor_bias():
    module = pair_bias_attention(seed=2, factor_config=FACTORS, mode="lowrank")
    with torch.no_grad():
        module.linear_z.weight.fill_(float("nan"))
    s, z = randn(2, 7, APB["c_s"], seed=1), randn(2, 7, 7, APB["c_z"], seed=2)
    mask, s_inputs = token_mask((2,), 7), randn(2, 7, C_S_INPUTS, seed=3)
    out = module(s, z, mask, s_inputs=s_inputs)
    p = ref.params64(module)
    term = ref.pair_bias_lowrank_bias_term(z, mask, p, n_heads=APB["n_heads"], s_inputs=s_inputs)
    expected = ref.attention_pair_bias(s, z, mask, p, n_heads=APB["n_heads"], bias_term=term)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_attention_pair_bias_mask_none_equals_all_ones(mode):
    module = pair_bias_attention(factor_config=FACTORS, mode=mode)
    s, z, s_inputs = randn(6, APB["c_s"]), randn(6, 6, APB["c_z"], seed=1), randn(6, C_S_INPUTS)
    ones = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(
        module(s, z, None, s_inputs=s_inputs), module(s, z, ones, s_inputs=s_inputs), rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------------------------------
# Distillation
# ------------------------------------------------------------------------------------------
def reference_loss(term_exact, term_lowrank, weights):
    """Relative squared error per batch element (over heads and valid pairs), averaged."""
    w = weights.double()[..., None, :, :]
    num = (w * (term_lowrank - term_exact) ** 2).sum((-3, -2, -1))
    return (num / (w * term_exact**2).sum((-3, -2, -1))).mean()


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_distill_returns_the_exact_output_and_the_relative_bias_error(convention):
    module = triangle(convention, seed=5, factor_config=FACTORS)
    z, mask = randn(2, 7, 7, TRI["c_z"], seed=5), pair_mask("random", (2,), 7)
    s_inputs = randn(2, 7, C_S_INPUTS, seed=6)
    exact = module(z, mask, s_inputs=s_inputs)
    module.mode = "distill"
    out, loss = module(z, mask, s_inputs=s_inputs)
    assert torch.equal(out, exact)

    spec = CONVENTIONS[convention]
    p = ref.params64(module)
    x = ref.layer_norm(z.double(), p["layer_norm.weight"], p["layer_norm.bias"], 1e-5)
    term_exact = ref.triangle_bias_term(ref.linear(x, p, "linear_b"), spec["node"], spec.get("ending_bias"))
    term_lowrank = ref.triangle_lowrank_bias_term(
        z, mask, p, n_heads=TRI["n_heads"], node=spec["node"], ending_bias=spec.get("ending_bias"), s_inputs=s_inputs
    )
    # the bias' pair mask: entry (x, y) of T is valid where its source pair is
    source_mask = mask.transpose(-1, -2) if spec.get("ending_bias") == "transposed" else mask
    expected = reference_loss(term_exact, term_lowrank, source_mask)
    assert loss.dim() == 0 and loss.item() > 1e-2
    assert abs(loss.item() - expected.item()) < 1e-5 * expected.item()


def set_exact_rank_one_factors_(module, bias_weight):
    """Factor network (depth 0, rank 1, no s_inputs) with phi_q = 1 and phi_k[h, k] =
    bias_weight[h] . (key feature of k): exact for a bias that depends on the key only."""
    net = module.factor_network
    with torch.no_grad():
        net.query_mlp[0].weight.zero_()
        net.query_mlp[0].bias.fill_(1.0)
        net.key_mlp[0].weight.copy_(bias_weight)
        net.key_mlp[0].bias.zero_()


RANK_ONE = FactorConfig(rank=1, width=8, depth=0)


def key_only_pair(batch, n, c, key_dim, seed=0):
    """z whose entries depend only on the index along ``key_dim`` (-3 or -2)."""
    f = randn(*batch, n, c, seed=seed)
    return f.unsqueeze(-2 if key_dim == -3 else -3).expand(*batch, n, n, c)


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_distill_loss_vanishes_for_an_exactly_representable_bias(convention):
    module = triangle(convention, factor_config=RANK_ONE, mode="distill")
    set_exact_rank_one_factors_(module, module.linear_b.weight)
    # The bias entry (query j, key k) comes from z[j, k], or from z[k, j] for the transposed
    # ending node: make it depend on k only there; the other orientation is not representable.
    key_dim = -3 if convention == "ending_transposed" else -2
    mask = pair_mask("padded", (2,), 6)
    _, loss = module(key_only_pair((2,), 6, TRI["c_z"], key_dim), mask)
    assert loss.item() < 1e-10
    _, loss_other = module(key_only_pair((2,), 6, TRI["c_z"], -5 - key_dim), mask)
    assert loss_other.item() > 1e-2


def test_attention_pair_bias_distill_loss_vanishes_for_an_exactly_representable_bias():
    module = pair_bias_attention(factor_config=RANK_ONE, mode="distill")
    set_exact_rank_one_factors_(module, module.linear_z.weight)
    s, mask = randn(2, 6, APB["c_s"]), token_mask((2,), 6)
    out, loss = module(s, key_only_pair((2,), 6, APB["c_z"], -2), mask)
    assert loss.item() < 1e-10
    _, loss_other = module(s, key_only_pair((2,), 6, APB["c_z"], -3), mask)
    assert loss_other.item() > 1e-2
    module.mode = "exact"
    assert torch.equal(out, module(s, key_only_pair((2,), 6, APB["c_z"], -2), mask))


# ------------------------------------------------------------------------------------------
# Gradients into the factor network
# ------------------------------------------------------------------------------------------
def factor_params(module):
    return {n: p for n, p in module.named_parameters() if n.startswith("factor_network.")}


def run_module(module, seed=0, device="cpu", dtype=torch.float32):
    """The module on fixed random inputs (batch 2, N = 6, padded tokens, s_inputs)."""

    def put(t):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    if isinstance(module, FlashBiasTriangleAttention):
        z = randn(2, 6, 6, TRI["c_z"], seed=seed)
        return module(put(z), put(pair_mask("padded", (2,), 6)), s_inputs=put(randn(2, 6, C_S_INPUTS, seed=seed + 1)))
    s, z = randn(2, 6, APB["c_s"], seed=seed), randn(2, 6, 6, APB["c_z"], seed=seed + 1)
    return module(put(s), put(z), put(token_mask((2,), 6)), s_inputs=put(randn(2, 6, C_S_INPUTS, seed=seed + 2)))


MODULES = {
    "triangle_starting": lambda **kw: triangle("starting", **kw),
    "triangle_ending_transposed": lambda **kw: triangle("ending_transposed", **kw),
    "attention_pair_bias": lambda **kw: pair_bias_attention(**kw),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_lowrank_gradients_reach_every_factor_parameter(name):
    module = MODULES[name](factor_config=FACTORS, mode="lowrank")
    run_module(module).square().sum().backward()
    for pname, p in factor_params(module).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(MODULES))
def test_distill_with_a_frozen_host_trains_only_the_factor_network(name):
    module = MODULES[name](factor_config=FACTORS, mode="distill")
    for pname, p in module.named_parameters():
        p.requires_grad_(pname.startswith("factor_network."))
    out, loss = run_module(module)
    assert not out.requires_grad
    loss.backward()
    for pname, p in module.named_parameters():
        if pname.startswith("factor_network."):
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
        else:
            assert p.grad is None, pname


@pytest.mark.parametrize("name", list(MODULES))
def test_deferred_distill_gives_the_sample_of_the_same_loss(name):
    """``defer_distill_loss``: the same update, and a BiasSample from which
    batched_approximation_losses gives the module's own loss and its gradients."""
    from pairformer_fb.modules.factor_network import BiasSample, batched_approximation_losses

    module = MODULES[name](factor_config=FACTORS, mode="distill")
    out, loss = run_module(module)
    grads = torch.autograd.grad(loss, list(module.factor_network.parameters()))
    module.defer_distill_loss = True
    out_deferred, sample = run_module(module)
    assert isinstance(sample, BiasSample) and torch.equal(out_deferred, out)
    (batched,) = batched_approximation_losses([(module.factor_network, sample)])
    assert rel_err(batched, loss) < 1e-6
    for a, b in zip(torch.autograd.grad(batched, list(module.factor_network.parameters())), grads, strict=True):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 1], ids=["one_chunk", "one_network_per_chunk"])
def test_batched_approximation_losses_match_each_networks_loss(chunk_bytes):
    """Networks of two architectures (one with s_inputs, depth 2), samples of two shapes, with
    and without a pair mask, in any order: each loss and every parameter's gradient as the
    per-network ``bias_approximation_loss`` gives them (fresh random weights and inputs)."""
    from pairformer_fb.modules.factor_network import (
        BiasSample,
        FactorNetwork,
        batched_approximation_losses,
        bias_approximation_loss,
    )

    torch.manual_seed(3)
    configs = [FactorConfig(rank=3, width=8, depth=1), FactorConfig(rank=2, width=6, depth=2)]
    items = []
    for i in range(7):
        config, heads, n = configs[i % 2], 2 + i % 2, (5, 7)[i % 3 == 0]
        net = FactorNetwork(c_z=4, n_heads=heads, config=config)
        for p in net.parameters():  # non-zero biases too
            torch.nn.init.normal_(p, std=0.5)
        mask = pair_mask("random", (2,), n, seed=i) if i % 2 else None
        bias = torch.randn(2, heads, n, n)
        fq, fk = net.features(torch.randn(2, n, n, 4), mask)
        items.append((net, BiasSample.of(fq, fk, bias, mask)))
    losses = batched_approximation_losses(items, chunk_bytes=chunk_bytes)
    params = [p for net, _ in items for p in net.parameters()]
    grads = torch.autograd.grad(torch.stack(losses).sum(), params)
    expected = [
        bias_approximation_loss(*net.factors_from_features(s.query_features, s.key_features), s.bias, s.pair_mask)
        for net, s in items
    ]
    expected_grads = torch.autograd.grad(torch.stack(expected).sum(), params)
    for got, want in zip(losses, expected, strict=True):
        assert rel_err(got, want) < 1e-6
    for got, want in zip(grads, expected_grads, strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("name", list(MODULES))
def test_deferred_distill_under_bf16_autocast_is_the_modules_loss(name):
    """As fine-tuning runs it on CUDA, here under CPU bf16 autocast: the deferred sample's batched
    loss is the module's own "distill" loss to bf16 rounding, and both are near the fp32 loss."""
    from pairformer_fb.modules.factor_network import batched_approximation_losses

    module = MODULES[name](factor_config=FACTORS, mode="distill")
    _, loss32 = run_module(module)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = run_module(module)
        module.defer_distill_loss = True
        _, sample = run_module(module)
        (batched,) = batched_approximation_losses([(module.factor_network, sample)])
    assert batched.dtype == torch.float32 and torch.isfinite(batched)
    assert abs(batched.item() - loss16.item()) < 2e-2 * loss16.item()
    assert abs(batched.item() - loss32.item()) < 5e-2 * loss32.item()


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("mode", ["exact", "lowrank", "distill"])
def test_modules_run_under_bf16_autocast(name, mode):
    """As the hosts run them: fp32 weights and inputs, bf16 autocast (layer norms in fp32, the
    projections, bias and factors in bf16, which the op needs to agree)."""
    module = MODULES[name](factor_config=FACTORS, mode=mode)
    out32 = run_module(module)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = run_module(module)
    if mode == "distill":
        (out32, loss32), (out16, loss16) = out32, out16
        assert abs(loss16.item() - loss32.item()) < 5e-2 * loss32.item()
    assert out16.dtype == torch.bfloat16
    assert rel_err(out16, out32) < 5e-2


# ------------------------------------------------------------------------------------------
# Construction, modes and input validation
# ------------------------------------------------------------------------------------------
def test_modes_need_a_factor_network_and_known_names():
    module = FlashBiasTriangleAttention(**TRI)
    for mode in ("lowrank", "distill"):
        with pytest.raises(ValueError, match="needs a factor network"):
            module.mode = mode
        with pytest.raises(ValueError, match="needs a factor network"):
            FlashBiasAttentionPairBias(**APB, mode=mode)
    with pytest.raises(ValueError, match="mode must be one of"):
        module.mode = "fast"
    assert module.mode == "exact"
    module = FlashBiasTriangleAttention(**TRI, factor_config=FACTORS, mode="lowrank")
    module.factor_network = None
    with pytest.raises(ValueError, match="needs a factor network"):
        module(randn(4, 4, TRI["c_z"]))


def test_the_ending_node_convention_must_be_explicit():
    with pytest.raises(ValueError, match="ending_bias"):
        FlashBiasTriangleAttention(**TRI, node="ending")
    with pytest.raises(ValueError, match="ending_bias"):
        FlashBiasTriangleAttention(**TRI, node="ending", ending_bias="auto")
    with pytest.raises(ValueError, match="only applies to node='ending'"):
        FlashBiasTriangleAttention(**TRI, ending_bias="transposed")
    with pytest.raises(ValueError, match="node must be"):
        FlashBiasTriangleAttention(**TRI, node="outgoing")


def test_host_parameter_layout():
    tri = FlashBiasTriangleAttention()
    shapes = {n: tuple(p.shape) for n, p in tri.named_parameters()}
    assert shapes == {
        "layer_norm.weight": (128,),
        "layer_norm.bias": (128,),
        "linear_q.weight": (128, 128),
        "linear_k.weight": (128, 128),
        "linear_v.weight": (128, 128),
        "linear_b.weight": (4, 128),
        "linear_g.weight": (128, 128),
        "linear_g.bias": (128,),
        "linear_o.weight": (128, 128),
        "linear_o.bias": (128,),
    }
    apb = FlashBiasAttentionPairBias(layer_norm_s=False)
    assert apb.head_dim == 24 and apb.layer_norm_s is None
    assert {n for n, p in apb.named_parameters() if n.endswith(".bias")} == {"layer_norm_z.bias", "linear_q.bias"}
    wide = FlashBiasTriangleAttention(256, 8, 32, q_bias=True, gate_bias=False, out_bias=False)
    assert wide.linear_q.bias is not None and wide.linear_g.bias is None and wide.linear_o.bias is None


def test_factor_config_validation_and_preset():
    with pytest.raises(ValueError, match="c_s_inputs"):
        FactorConfig(use_s_inputs=True)
    with pytest.raises(ValueError, match="use_s_inputs=False"):
        FactorConfig(c_s_inputs=8)
    with pytest.raises(ValueError, match="rank"):
        FactorConfig(rank=0)
    with pytest.raises(ValueError, match="init"):
        FactorConfig(init="zeros")
    preset = FactorConfig.af3_preset(c_s_inputs=449)
    assert (preset.rank, preset.width, preset.use_s_inputs, preset.c_s_inputs) == (96, 256, True, 449)


@pytest.mark.parametrize(
    "z_shape,mask_shape,match",
    [
        ((5, 6, 16), None, r"z must be \[\*, N, N, c_z\].*got \[5, 6, 16\]"),
        ((5, 5, 12), None, r"z must be .*c_z = 16"),
        ((5, 16), None, r"z must be"),
        ((5, 5, 16), (5, 4), r"mask must be \[\*, N, N\].* = \[5, 5\], got \[5, 4\]"),
        ((2, 5, 5, 16), (5, 5), r"mask must be .* = \[2, 5, 5\]"),
    ],
)
def test_triangle_rejects_bad_shapes(z_shape, mask_shape, match):
    module = FlashBiasTriangleAttention(**TRI)
    mask = torch.ones(mask_shape, dtype=torch.bool) if mask_shape else None
    with pytest.raises(ValueError, match=match):
        module(torch.zeros(z_shape), mask)


@pytest.mark.parametrize("budget_rows,chunk,calls", [(0, 3, 3), (4, 3, 2), (100, 3, 1), (1, 4, 2)])
def test_triangle_chunk_size_is_a_lower_bound_within_the_budget(monkeypatch, budget_rows, chunk, calls):
    """chunk_size bounds the rows per op call from below; the projection budget decides how many
    more fit (N = 7: 3 rows per call -> 3 calls; a 4-row budget -> 2; the whole budget -> 1);
    the result is the same."""
    import pairformer_fb.modules.triangle_attention as tri

    module = triangle("starting")
    z, mask = randn(7, 7, TRI["c_z"], seed=5), pair_mask("random", (), 7)
    expected = reference_triangle(module, z, mask, "starting")
    row_bytes = 7 * 4 * TRI["n_heads"] * TRI["head_dim"] * z.element_size()
    module.chunk_budget_bytes = budget_rows * row_bytes
    seen = []
    op = tri.flash_bias_attention
    monkeypatch.setattr(tri, "flash_bias_attention", lambda q, *a, **k: seen.append(q.shape[0]) or op(q, *a, **k))
    out = module(z, mask, chunk_size=chunk)
    assert len(seen) == calls and sum(seen) == 7
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_triangle_chunks_without_autograd_go_into_one_output(convention, monkeypatch):
    """Without autograd the row chunks are written into one output instead of concatenated, in
    their places (both nodes, batch dims): the algorithm's values, those of the concatenation
    (autograd on; the op's inference path rounds differently, ~1e-7), and no pair-sized
    torch.cat is made."""
    import pairformer_fb.modules.triangle_attention as tri

    module = triangle(convention, seed=3)
    module.chunk_budget_bytes = 0  # chunk_size exactly: 3 chunks of 3, 3 and 1 rows
    z, mask = randn(2, 7, 7, TRI["c_z"], seed=6), pair_mask("random", (2,), 7)
    with_grad = module(z, mask, chunk_size=3)
    assert with_grad.requires_grad
    cats = []
    real_cat = torch.cat

    def cat(*args, **kwargs):
        out = real_cat(*args, **kwargs)
        cats.append(out.numel())
        return out

    monkeypatch.setattr(tri.torch, "cat", cat)
    with torch.no_grad():
        into_one = module(z, mask, chunk_size=3)
    assert z[0].numel() not in cats  # (the fused q / k / v / g weights are concatenated, not the update)
    assert into_one.is_contiguous() and into_one.dtype == with_grad.dtype
    assert rel_err(into_one, with_grad.detach()) < 1e-6
    assert rel_err(into_one, reference_triangle(module, z, mask, convention)) < 1e-5


@pytest.mark.parametrize("budget", [-1, 2.5, True])
def test_triangle_rejects_a_bad_chunk_budget(budget):
    with pytest.raises(ValueError, match="chunk_budget_bytes must be an int >= 0"):
        FlashBiasTriangleAttention(**TRI, chunk_budget_bytes=budget)


def test_triangle_rejects_bad_chunk_size_and_s_inputs():
    module = FlashBiasTriangleAttention(**TRI, factor_config=FACTORS, mode="lowrank")
    z = torch.zeros(5, 5, TRI["c_z"])
    with pytest.raises(ValueError, match="chunk_size"):
        module(z, chunk_size=0)
    with pytest.raises(ValueError, match=r"s_inputs must be \[\*, N, c_s_inputs\] = \[5, 5\], got \[5, 7\]"):
        module(z, s_inputs=torch.zeros(5, 7))
    with pytest.raises(ValueError, match="pass s_inputs"):
        module(z)


@pytest.mark.parametrize(
    "s_shape,z_shape,mask_shape,match",
    [
        ((5, 20), (5, 5, 16), None, r"s must be \[\*, N, c_s\] with c_s = 24, got \[5, 20\]"),
        ((5, 24), (5, 5, 8), None, r"z must be \[\*, N, N, c_z\] .* = \[5, 5, 16\], got \[5, 5, 8\]"),
        ((5, 24), (6, 6, 16), None, r"z must be .* = \[5, 5, 16\]"),
        ((2, 5, 24), (5, 5, 16), None, r"z must be .* = \[2, 5, 5, 16\]"),
        ((5, 24), (5, 5, 16), (4,), r"mask must be \[\*, N\] .* = \[5\], got \[4\]"),
    ],
)
def test_attention_pair_bias_rejects_bad_shapes(s_shape, z_shape, mask_shape, match):
    module = FlashBiasAttentionPairBias(**APB)
    mask = torch.ones(mask_shape, dtype=torch.bool) if mask_shape else None
    with pytest.raises(ValueError, match=match):
        module(torch.zeros(s_shape), torch.zeros(z_shape), mask)


# ------------------------------------------------------------------------------------------
# The Triton kernels behind the modules (strided q/k/v/gate views, a transposed bias and
# mask): CPU interpreter here, the real kernels on a GPU
# ------------------------------------------------------------------------------------------
TRITON_AVAILABLE = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def outputs_and_grads(module, backend, **run_kw):
    module.backend = backend
    module.zero_grad()
    out = run_module(module, **run_kw)
    out.float().square().sum().backward()
    return out, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.interpret
@pytest.mark.skipif(not TRITON_AVAILABLE, reason="needs TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_modules_on_the_triton_kernels_match_the_reference_backend(name, mode):
    module = MODULES[name](factor_config=FACTORS, mode=mode).to(DEVICE)
    out, grads = outputs_and_grads(module, "triton", device=DEVICE)
    out_ref, grads_ref = outputs_and_grads(module, "reference", device=DEVICE)
    assert rel_err(out, out_ref) < 1e-5
    assert grads.keys() == grads_ref.keys()
    assert_grads_close(grads.values(), list(grads_ref.values()), grads_ref, 1e-4)
    with torch.no_grad():  # inference: the gate is applied in the kernel's epilogue
        module.backend = "triton"
        assert rel_err(run_module(module, device=DEVICE), out_ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_modules_in_bf16_on_gpu_match_fp32(name, mode):
    """bf16 on the Triton kernels (and its autograd) against the same module in fp32."""
    module = MODULES[name](factor_config=FACTORS, mode=mode).cuda()
    out32, grads32 = outputs_and_grads(module, "auto", device="cuda")
    out16, grads16 = outputs_and_grads(module.bfloat16(), "auto", device="cuda", dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    assert rel_err(out16, out32) < 3e-2
    assert grads16.keys() == grads32.keys()
    assert_grads_close(grads16.values(), list(grads32.values()), grads32, 5e-2, floor_fraction=0.1)


def test_stacked_projection_weights_are_reused_only_while_the_parameters_are_unchanged():
    """concat_linear_params keeps the stacked weights for inference and rebuilds them after a
    parameter changes in place (an optimiser step, load_state_dict); with gradients to track
    it returns fresh, differentiable tensors."""
    from pairformer_fb.modules.common import concat_linear_params

    a, b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        w1, bias1 = concat_linear_params([a, b])
        w2, _ = concat_linear_params([a, b])
        assert w2 is w1 and torch.equal(w1, torch.cat([a.weight, b.weight]))
        assert torch.equal(bias1, torch.cat([a.bias, torch.zeros(3)]))
        b.weight.add_(1.0)
        w3, _ = concat_linear_params([a, b])
        assert w3 is not w1 and torch.equal(w3[4:], b.weight)
    w4, bias4 = concat_linear_params([a, b])
    assert w4.requires_grad and w4 is not w3
    (w4.sum() + bias4.sum()).backward()
    assert torch.equal(b.weight.grad, torch.ones_like(b.weight))


def test_one_factor_rank_default_and_one_rank_check():
    from pairformer_fb.modules.factor_network import DEFAULT_RANK, factor_config_for

    assert FactorConfig().rank == DEFAULT_RANK == factor_config_for(None, None).rank
    assert factor_config_for(8, None).rank == 8
    cfg = FactorConfig(rank=16)
    assert factor_config_for(None, cfg) is cfg and factor_config_for(16, cfg) is cfg
    with pytest.raises(ValueError, match="rank=8 disagrees"):
        factor_config_for(8, cfg)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: FlashBiasTriangleAttention(16, n_heads=0, head_dim=8), r"n_heads must be an int >= 1, got 0"),
        (lambda: FlashBiasTriangleAttention(16, n_heads=2, head_dim=-1), r"head_dim must be an int >= 1, got -1"),
        (lambda: FlashBiasTriangleAttention(16, n_heads=2, head_dim=129), r"head_dim must be <= 128"),
        (lambda: FlashBiasTriangleAttention(0, n_heads=2, head_dim=8), r"c_z must be an int >= 1, got 0"),
        (lambda: FlashBiasTriangleAttention(16, 2, 8, backend="cuda"), r"backend must be 'auto', 'triton' or"),
        (lambda: FlashBiasAttentionPairBias(c_s=24, c_z=16, n_heads=0), r"n_heads must be an int >= 1, got 0"),
        (lambda: FlashBiasAttentionPairBias(c_s=24, c_z=16, n_heads=-3), r"n_heads must be an int >= 1, got -3"),
        (lambda: FlashBiasAttentionPairBias(c_s=24, c_z=16, n_heads=5), r"c_s = 24 is not divisible by n_heads = 5"),
        (lambda: FlashBiasAttentionPairBias(c_s=24.0, c_z=16), r"c_s must be an int >= 1, got 24.0"),
        (lambda: FactorConfig(rank=2.5), r"FactorConfig needs rank an int >= 1, got rank=2.5"),
        (lambda: FactorConfig(rank="4"), r"FactorConfig needs rank an int >= 1, got rank='4'"),
        (lambda: FactorConfig(depth=-1), r"FactorConfig needs depth an int >= 0"),
    ],
)
def test_module_constructors_name_a_bad_size_or_backend(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_diffusion_and_precomputed_constructors_name_a_bad_size():
    from pairformer_fb.modules.diffusion_attention import FlashBiasDiffusionAttention
    from pairformer_fb.modules.precomputed_bias_attention import FlashBiasPrecomputedBiasAttention

    with pytest.raises(ValueError, match=r"n_heads must be an int >= 1, got 0"):
        FlashBiasDiffusionAttention(c_a=32, c_s=16, c_z=8, n_heads=0)
    with pytest.raises(ValueError, match=r"c_z must be an int >= 1, got None"):
        FlashBiasDiffusionAttention(c_a=32, c_s=16, c_z=None, n_heads=2)
    with pytest.raises(ValueError, match=r"head_dim must be an int >= 1, got 0"):
        FlashBiasPrecomputedBiasAttention(c_q=32, n_heads=2, head_dim=0)
    assert FactorConfig(rank=__import__("numpy").int64(4)).rank == 4  # numpy integers are integers


@pytest.mark.parametrize(
    "name,make_inputs,match",
    [
        ("triangle", lambda: (torch.randn(0, 6, 6, 16),), r"z has shape \[0, 6, 6, 16\]: every dimension must be >= 1"),
        ("triangle", lambda: (torch.randn(2, 0, 0, 16),), r"z has shape \[2, 0, 0, 16\]: every dimension"),
        (
            "triangle",
            lambda: (torch.randn(5, 5, 16, dtype=torch.bfloat16),),
            r"z has dtype torch.bfloat16, the module's",
        ),
        ("triangle", lambda: (torch.ones(5, 5, 16, dtype=torch.int64),), r"z must be a floating-point tensor"),
        ("triangle", lambda: (torch.randn(5, 5, 16, device="meta"),), r"z is on meta, the module's parameters on cpu"),
        ("pair_bias", lambda: (torch.randn(2, 0, 24), torch.randn(2, 0, 0, 16)), r"s has shape \[2, 0, 24\]"),
        ("pair_bias", lambda: (torch.randn(5, 24).double(), torch.randn(5, 5, 16)), r"s has dtype torch.float64"),
        ("pair_bias", lambda: (torch.randn(5, 24), torch.randn(5, 5, 16).half()), r"z has dtype torch.float16"),
    ],
)
def test_module_inputs_of_another_dtype_device_or_empty_are_one_line(name, make_inputs, match):
    """Inputs the projections would reject deep inside torch (or an empty batch / N = 0) are one
    line naming the input; under autocast another floating dtype is fine (autocast casts)."""
    module = {
        "triangle": lambda: FlashBiasTriangleAttention(16, 2, 8),
        "pair_bias": lambda: FlashBiasAttentionPairBias(24, 16, 2),
    }[name]()
    with pytest.raises((ValueError, TypeError), match=match):
        module(*make_inputs())


def test_module_inputs_of_another_dtype_run_under_autocast():
    module = FlashBiasTriangleAttention(16, 2, 8)
    z = torch.randn(5, 5, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(z)
    assert out.shape == z.shape and torch.isfinite(out.float()).all()


def test_clear_weight_caches_after_an_edit_through_data():
    """A standalone module's inference cache of its stacked projections misses an edit through
    ``.data`` (no version counter moves) until clear_weight_caches; gradient mode never caches."""
    from pairformer_fb import clear_weight_caches

    torch.manual_seed(0)
    module = FlashBiasTriangleAttention(16, 2, 8)
    z = torch.randn(6, 6, 16)
    with torch.no_grad():
        module(z)
        module.linear_q.weight.data.mul_(2)
        fresh = copy.deepcopy(module)
        for m in fresh.modules():
            m.__dict__.pop("_pfb_concat_cache", None)
        want = fresh(z)
        assert rel_err(module(z), want) > 1e-3  # stale
        assert clear_weight_caches(module) == 1
        assert rel_err(module(z), want) < 1e-6
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        clear_weight_caches("model.pt")
