"""The Triton kernels on a GPU at real sizes against the torch reference (skipped without CUDA)."""

import pytest
import torch
from naive import LaunchSpy, differentiable, fp32_leaves, grads, make_inputs, rel_err

from pairformer_fb import flash_bias_attention

pytestmark = pytest.mark.gpu

CASES = {
    # name: (B, H, Lq, Lk, D, R, factor_batch, bias_shape, mask_shape, dtype)
    "triangle_bias_bf16": (256, 4, 256, 256, 32, 0, 1, (1, 4, 256, 256), (256, 256), torch.bfloat16),
    "triangle_factors_bf16": (200, 4, 200, 200, 32, 32, 1, None, (200, 200), torch.bfloat16),
    "triangle_both_fp16": (96, 4, 300, 300, 32, 16, 1, (1, 4, 300, 300), None, torch.float16),
    "single_bias_d24_bf16": (1, 16, 777, 777, 24, 0, 1, (1, 16, 777, 777), (1, 777), torch.bfloat16),
    "diffusion_d48_samples": (5, 16, 384, 384, 48, 0, 1, (1, 16, 384, 384), (1, 384), torch.bfloat16),
    # its factors (lowrank mode) on the same one-row 32 x 64 backward tiles since session 13
    "diffusion_d48_factors": (5, 16, 387, 387, 48, 32, 1, None, (1, 387), torch.bfloat16),
    "wide_d128_r96": (8, 2, 257, 255, 128, 96, 1, (1, 2, 257, 255), None, torch.bfloat16),
    "row_factors_fp32": (16, 2, 129, 131, 48, 7, 16, (16, 1, 129, 131), (16, 131), torch.float32),
    # per-row factors in 16 bits (the fused kernel; fp32 at this width runs the torch reference)
    "row_factors_bf16": (16, 2, 129, 131, 32, 7, 16, (16, 1, 129, 131), (16, 131), torch.bfloat16),
    # Protenix's diffusion runs in fp32: the bf16 tiles of D = 48 (padded 64) with a dense bias
    # need more shared memory than an H200 has, and shrink at launch
    "diffusion_d48_fp32": (5, 16, 384, 384, 48, 0, 1, (1, 16, 384, 384), (1, 384), torch.float32),
    "rank1_d8": (32, 4, 65, 63, 8, 1, 1, (1, 4, 1, 63), None, torch.float16),
    # padded rank > padded head dim: at 4 warps the backward read shared memory out of bounds
    # (fuzz case 181 of benchmarks/session5, call 2; call 4's compute-sanitizer run)
    "fuzz181_d27_r38": (11, 1, 53, 315, 27, 38, 1, (11, 1, 1, 315), (11, 315), torch.bfloat16),
    "d8_r20_row_bias": (6, 1, 77, 200, 8, 20, 1, (6, 1, 1, 200), (6, 200), torch.bfloat16),
}
TOL = {torch.bfloat16: (2e-2, 3e-2), torch.float16: (3e-3, 1e-2), torch.float32: (1e-5, 1e-4)}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference_on_gpu(name):
    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape, dtype = CASES[name]
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape, dtype=dtype, device="cuda"
    )
    out = flash_bias_attention(*args, **kw)
    # the oracle: the reference on fp32 copies of the same inputs
    args32, kw32 = fp32_leaves(args, kw)
    ref = flash_bias_attention(*args32, **kw32, backend="reference")
    tol_fwd, tol_bwd = TOL[dtype]
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < tol_fwd
    names = ["q", "k", "v", *[n for n in kw if n != "key_mask"]]
    for n, a, b in zip(names, grads(out, differentiable(args, kw)), grads(ref, differentiable(args32, kw32))):
        assert a.shape == b.shape and torch.isfinite(a).all(), n
        assert rel_err(a, b) < tol_bwd, n


@pytest.mark.parametrize("name", ["triangle_bias_bf16", "triangle_factors_bf16", "triangle_both_fp16"])
@pytest.mark.parametrize("tiles_", [(64, 32, 4, 3, 4), (64, 64, 4, 3, 4)], ids=["m64n32r4", "m64n64r4"])
def test_forward_with_four_rows_per_program_on_gpu(name, tiles_, monkeypatch):
    """The forward's four rows per program (issue 17's candidate tiles, not a default) on the GPU,
    against the fp32 reference and as close to it as the default tiles, for B not a multiple of 4."""
    from pairformer_fb.kernel import tiles
    from pairformer_fb.kernel.op import pow2_at_least_16

    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape, dtype = CASES[name]
    B -= 3
    bias_shape = (1, *bias_shape[1:]) if bias_shape else None
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape and (B, Lk), dtype=dtype,
        device="cuda",
    )  # fmt: skip
    with torch.no_grad():
        ref = flash_bias_attention(*[a.float() for a in args], **{n: t if t.dtype == torch.bool else t.float()
                                   for n, t in kw.items()}, backend="reference")  # fmt: skip
        default = flash_bias_attention(*args, **kw)
        key = tiles.config_key("fwd", pow2_at_least_16(D), pow2_at_least_16(R) if R else 0, bias_shape is not None, 2)
        monkeypatch.setitem(tiles.CONFIG_OVERRIDES, key, tiles.KernelConfig(*tiles_))
        four = flash_bias_attention(*args, **kw)
    assert torch.isfinite(four).all() and rel_err(four, ref) < TOL[dtype][0]
    assert rel_err(four, ref) < 1.5 * rel_err(default, ref) + 1e-4


@pytest.mark.parametrize("name", ["triangle_bias_bf16", "triangle_factors_bf16", "triangle_both_fp16"])
@pytest.mark.parametrize("tiles_", [(64, 64, 8, 2, 4), (64, 32, 4, 3, 4)], ids=["m64n64w8r4", "m64n32s3r4"])
def test_backward_with_four_rows_per_program_on_gpu(name, tiles_, monkeypatch):
    """The backward's four rows per program (session 14's option, not a default; its tiles spill on
    sm_90) on the GPU, with the bulk reduce-adds at this size too, against the fp32 reference and
    as close to it as the default tiles, for B not a multiple of 4."""
    from pairformer_fb.kernel import tiles, triton_launch
    from pairformer_fb.kernel.op import pow2_at_least_16

    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape, dtype = CASES[name]
    B -= 3
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape and (B, Lk), dtype=dtype,
        device="cuda",
    )  # fmt: skip
    args32, kw32 = fp32_leaves(args, kw)
    ref = grads(flash_bias_attention(*args32, **kw32, backend="reference"), differentiable(args32, kw32))
    monkeypatch.setattr(tiles, "TMA_REDUCE_MIN_SCORES", 0)
    default = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))
    key = tiles.config_key("bwd", pow2_at_least_16(D), pow2_at_least_16(R) if R else 0, bias_shape is not None, 2)
    monkeypatch.setitem(tiles.CONFIG_OVERRIDES, key, tiles.KernelConfig(*tiles_, fuse_ds=True))
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    four = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))
    assert spy.calls and all(c["ROWS"] == 4 for c in spy.calls)
    names = ["q", "k", "v", *[n for n in kw if n != "key_mask"]]
    for n, a, b, r in zip(names, four, default, ref):
        assert torch.isfinite(a).all() and rel_err(a, r) < TOL[dtype][1], n
        assert rel_err(a, r) < 1.5 * rel_err(b, r) + 1e-4, n


def test_small_backwards_skip_the_bulk_reduce_adds_on_gpu(monkeypatch):
    """tiles.TMA_REDUCE_MIN_SCORES (session 14): below 2^28 scores the backward keeps its atomics
    (host-bound sizes), above it takes the bulk reduce-adds; the gradients agree either way."""
    from pairformer_fb.kernel import tiles, triton_launch

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("bulk tensor reduce-adds need compute capability 9")
    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset({"dq", "ds"}))
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = make_inputs(64, 4, 128, 128, 32, 0, bias_shape=(1, 4, 128, 128), dtype=torch.bfloat16, device="cuda")
    small = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))  # 4 M scores
    assert spy.calls and not any(c["TMA_DQ"] or c["TMA_DS"] for c in spy.calls)
    spy.calls.clear()
    monkeypatch.setattr(tiles, "TMA_REDUCE_MIN_SCORES", 1 << 20)
    bulk = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))
    assert spy.calls and all(c["TMA_DQ"] and c["TMA_DS"] for c in spy.calls)
    for a, b in zip(small, bulk):
        assert rel_err(a, b) < 1e-2


@pytest.mark.parametrize(
    "name", ["triangle_bias_bf16", "triangle_factors_bf16", "triangle_both_fp16", "row_factors_bf16", "rank1_d8"]
)
def test_bulk_reduce_adds_match_the_atomics_on_gpu(name, monkeypatch):
    """tiles.TMA_REDUCE (the default on sm_90, issue 17): dQ and the fused dS sum added by
    the copy engine's bulk tensor reduce-adds, on lengths the tiles do not divide and an odd
    number of rows (the clamped row adds zeros), against the fp32 reference and as close to it
    as the per-thread atomics."""
    from pairformer_fb.kernel import tiles, triton_launch

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("bulk tensor reduce-adds need compute capability 9")
    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape, dtype = CASES[name]
    B, Lq, Lk = B - 3 if fb == 1 else B, Lq - 5, Lk - 7
    bias_shape = bias_shape and (*bias_shape[:2], min(bias_shape[2], Lq), Lk)
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape and (min(mask_shape[0], B), Lk),
        dtype=dtype, device="cuda",
    )  # fmt: skip
    args32, kw32 = fp32_leaves(args, kw)
    ref = grads(flash_bias_attention(*args32, **kw32, backend="reference"), differentiable(args32, kw32))
    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset())
    atomics = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))
    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset({"dq", "ds"}))
    monkeypatch.setattr(tiles, "TMA_REDUCE_MIN_SCORES", 0)  # these small cases take them too
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    bulk = grads(flash_bias_attention(*args, **kw), differentiable(args, kw))
    assert spy.calls and all(c["TMA_DQ"] for c in spy.calls)
    assert all(c["TMA_DS"] == c["FUSE_DS"] and not c["DS_STORE"] for c in spy.calls if c["FUSE_DS"])
    names = ["q", "k", "v", *[n for n in kw if n != "key_mask"]]
    for n, a, b, r in zip(names, bulk, atomics, ref):
        assert torch.isfinite(a).all() and rel_err(a, r) < TOL[dtype][1], n
        assert rel_err(a, r) < 1.5 * rel_err(b, r) + 1e-4, n


def test_tf32_follows_torch_switch():
    args, kw = make_inputs(64, 4, 128, 128, 32, 16, bias_shape=(1, 4, 128, 128), device="cuda")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert rel_err(flash_bias_attention(*args, **kw), ref) < 1e-5
        torch.backends.cuda.matmul.allow_tf32 = True
        assert rel_err(flash_bias_attention(*args, **kw), ref) < 3e-3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_rows_on_gpu(dtype):
    args, kw = make_inputs(
        8,
        4,
        100,
        100,
        32,
        8,
        bias_shape=(1, 4, 100, 100),
        mask_shape=(8, 100),
        fully_masked_rows=(3,),
        dtype=dtype,
        device="cuda",
    )
    out = flash_bias_attention(*args, **kw)
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert torch.isfinite(out).all() and rel_err(out, ref) < TOL[dtype][0]
    ins = differentiable(args, kw)
    for a, b in zip(grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < TOL[dtype][1]


def test_shared_bias_gradient_allocates_no_per_row_tensor():
    # N = 1024 rows: a per-row fp32 [B, H, N, N] tensor would be 16 GiB; the bias-shaped one 16 MiB
    N, H, D = 1024, 4, 32
    args, kw = make_inputs(
        N, H, N, N, D, 0, bias_shape=(1, H, N, N), dtype=torch.bfloat16, device="cuda", requires_grad=True
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = flash_bias_attention(*args, **kw)
    torch.autograd.grad(out, differentiable(args, kw), torch.randn_like(out))
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 4 * 2**30, f"fwd+bwd took {peak / 2**30:.1f} GiB over the inputs"


@pytest.mark.parametrize("layout", ["token_major", "row_transposed"])
def test_gate_fused_in_the_epilogue_on_gpu(layout):
    """Triangle-module layout at a real size, bf16, inference: the fused gate equals
    sigmoid(gate) * the fp32 reference."""
    g = torch.Generator().manual_seed(0)
    n, H, D = 200, 4, 32
    proj = torch.randn(n, n, 4, H, D, generator=g).to(torch.bfloat16).cuda()
    views = proj.unbind(2)
    if layout == "row_transposed":
        views = [t.transpose(0, 1) for t in views]
    q, k, v, gate = (t.transpose(1, 2) for t in views)
    bias = torch.randn(1, H, n, n, generator=g).to(torch.bfloat16).cuda()
    mask = (torch.rand(n, n, generator=g) > 0.2).cuda()
    with torch.no_grad():
        out = flash_bias_attention(q, k, v, bias=bias, key_mask=mask, gate=gate)
    ref = torch.sigmoid(gate.float()) * flash_bias_attention(
        q.float(), k.float(), v.float(), bias=bias.float(), key_mask=mask, backend="reference"
    )
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("name", ["triangle_bias_bf16", "triangle_factors_bf16", "triangle_both_fp16"])
def test_chunked_program_order_matches_the_reference_on_gpu(name, monkeypatch):
    """GRID_ORDER 3 (chunks of row groups side by side; the default where a row-shared operand
    outgrows L2, issue 17) forced for the forward and backward at a size the default would not
    use it, with a short last chunk: against the fp32 reference and as close to it as the
    default order."""
    from pairformer_fb.kernel import tiles, triton_launch

    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape, dtype = CASES[name]
    B -= 3
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape and (B, Lk), dtype=dtype,
        device="cuda",
    )  # fmt: skip
    args32, kw32 = fp32_leaves(args, kw)
    ref_out = flash_bias_attention(*args32, **kw32, backend="reference")
    ref = [ref_out, *grads(ref_out, differentiable(args32, kw32))]
    default_out = flash_bias_attention(*args, **kw)
    default = [default_out, *grads(default_out, differentiable(args, kw))]
    monkeypatch.setattr(tiles, "_FORCED_GRID_ORDER_OF", {"fwd": "3", "bwd": "3"})
    monkeypatch.setattr(tiles, "GRID_GROUP", 5)  # cdiv(B, 2) row groups: not a multiple of 5
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    out = flash_bias_attention(*args, **kw)
    chunked = [out, *grads(out, differentiable(args, kw))]
    assert spy.calls and all(c["GRID_ORDER"] == 3 for c in spy.calls)
    for n, a, b, r in zip(["o", "q", "k", "v", *[n for n in kw if n != "key_mask"]], chunked, default, ref):
        assert torch.isfinite(a).all() and rel_err(a, r) < TOL[dtype][1], n
        assert rel_err(a, r) < 1.5 * rel_err(b, r) + 1e-4, n


def test_a_dense_bias_past_the_l2_share_takes_the_chunked_order_on_gpu(monkeypatch):
    """The default order at N = 1536 (4 heads, 20 rows): the backward's 36 MiB dS sum is past
    0.6 x L2 on an H100 / H200 (50 MiB), so its launch takes GRID_ORDER 3, and the gradients
    match the fp32 reference."""
    from pairformer_fb.kernel import tiles, triton_launch

    N = 1536
    if 4 * N * N * 4 <= tiles.BWD_ORDER3_L2_SHARE * tiles.cuda_properties(torch.device("cuda")).L2_cache_size:
        pytest.skip("this GPU's L2 holds the dS sum: the default order stays")
    args, kw = make_inputs(20, 4, N, N, 32, 0, bias_shape=(1, 4, N, N), dtype=torch.bfloat16, device="cuda")
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    out = flash_bias_attention(*args, **kw)
    got = grads(out, differentiable(args, kw))
    assert spy.calls and all(c["GRID_ORDER"] == 3 for c in spy.calls)
    args32, kw32 = fp32_leaves(args, kw)
    ref = grads(flash_bias_attention(*args32, **kw32, backend="reference"), differentiable(args32, kw32))
    for n, a, r in zip(["q", "k", "v", "bias"], got, ref):
        assert torch.isfinite(a).all() and rel_err(a, r) < TOL[torch.bfloat16][1], n
