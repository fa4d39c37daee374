"""An independent, fully materialised float64 implementation of the op's semantics: the oracle
the chunked reference and the kernels are checked against; and the kernel tests' shared helpers
(inputs, gradients, relative error, a launch spy)."""

import torch

from pairformer_fb.bench.fuzz import float64_oracle


def naive_attention(
    q, k, v, q_factors=None, k_factors=None, bias=None, key_mask=None, scale=None, compute_dtype=torch.float64
):
    """The op's formula in ``compute_dtype`` with the key mask added exactly (the fuzz suite's
    oracle, pairformer_fb.bench.fuzz.float64_oracle, without its fp32 mask rounding)."""
    return float64_oracle(
        q,
        k,
        v,
        q_factors,
        k_factors,
        bias,
        key_mask,
        scale=scale,
        compute_dtype=compute_dtype,
        mask_dtype=compute_dtype,
    )


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(
    B,
    H,
    Lq,
    Lk,
    D,
    R=0,
    *,
    factor_batch=1,
    bias_shape=None,
    mask_shape=None,
    fully_masked_rows=(),
    dtype=torch.float32,
    device="cpu",
    requires_grad=True,
    seed=None,
):
    """Fresh random operands for one call of the op; returns (args, kwargs).

    Factors are drawn with a scale that gives the bias term a spread comparable to the
    attention logits (so every term matters); the mask keeps ~70% of keys.
    """
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)

    def rnd(*shape, std=1.0):
        t = (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype).to(device)
        return t.requires_grad_(requires_grad)

    q, k, v = rnd(B, H, Lq, D), rnd(B, H, Lk, D), rnd(B, H, Lk, D)
    kw = {}
    if R:
        kw["q_factors"] = rnd(factor_batch, H, Lq, R, std=R**-0.25)
        kw["k_factors"] = rnd(factor_batch, H, Lk, R, std=R**-0.25)
    if bias_shape is not None:
        kw["bias"] = rnd(*bias_shape)
    if mask_shape is not None:
        keep = torch.rand(*mask_shape, generator=g) > 0.3
        keep[..., 0] = True  # every row keeps a key unless asked otherwise
        for b in fully_masked_rows:
            keep[b] = False
        kw["key_mask"] = keep.to(device)
    return (q, k, v), kw


def grads(out, inputs, seed=0):
    """Gradients of <out, g> for a fixed random cotangent g."""
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    return torch.autograd.grad(out, inputs, cot, allow_unused=True)


def differentiable(args, kw):
    return list(args) + [t for n, t in kw.items() if n != "key_mask"]


def fp32_leaves(args, kw):
    """(args, kw) of make_inputs as fp32 leaves that require grad, for the fp32 reference; the
    bool key mask kept as it is."""
    leaf = lambda t: t if t.dtype == torch.bool else t.detach().float().requires_grad_(True)  # noqa: E731
    return [leaf(a) for a in args], {n: leaf(t) for n, t in kw.items()}


class LaunchSpy:
    """Stands in for a Triton kernel in triton_launch: records each launch's keyword arguments
    and runs the kernel."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.calls.append(kwargs)
            return launch(*args, **kwargs)

        return run
