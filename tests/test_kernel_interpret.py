"""The Triton kernels themselves, run in Triton's CPU interpreter (TRITON_INTERPRET=1, set by
conftest.py when there is no GPU), forward and backward, against the torch reference.

bf16 is covered by the GPU tests only: the interpreter (Triton 3.6) computes bf16 x bf16
products wrongly (it reinterprets the bits), so here the kernels run in fp32 and fp16."""

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from naive import LaunchSpy, differentiable, grads, make_inputs, rel_err

from pairformer_fb import flash_bias_attention

pytest.importorskip("triton")
pytestmark = [
    pytest.mark.interpret,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
        reason="needs TRITON_INTERPRET=1 or a GPU",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

MODES = {
    # name: (B, H, Lq, Lk, D, R, factor_batch, bias_shape, mask_shape)
    "plain": (2, 2, 19, 23, 24, 0, 1, None, None),
    "shared_factors": (3, 2, 33, 17, 16, 7, 1, None, None),
    "row_factors": (2, 2, 17, 20, 32, 1, 2, None, (2, 20)),
    "shared_bias": (3, 2, 18, 35, 8, 0, 1, (1, 2, 18, 35), (3, 35)),
    "row_bias": (2, 1, 21, 18, 48, 0, 1, (2, 1, 21, 18), None),
    "head_shared_bias": (2, 3, 16, 16, 16, 0, 1, (1, 1, 16, 16), (16,)),
    "key_bias": (2, 2, 9, 30, 16, 0, 1, (1, 2, 1, 30), None),
    "factors_bias_mask": (3, 2, 20, 18, 16, 5, 1, (1, 2, 20, 18), (3, 18)),
    "row_factors_shared_bias": (2, 2, 17, 17, 16, 16, 2, (1, 2, 17, 17), (2, 17)),
    "single_key": (2, 2, 5, 1, 16, 3, 1, (1, 2, 5, 1), None),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(mode, dtype):
    B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape = MODES[mode]
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape, dtype=dtype, device=DEVICE
    )
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert out.dtype == dtype and out.shape == ref.shape
    tol_fwd, tol_bwd = (1e-5, 1e-4) if dtype == torch.float32 else (2e-3, 1e-2)
    assert rel_err(out, ref) < tol_fwd
    ins = differentiable(args, kw)
    names = ["q", "k", "v", *[n for n in kw if n != "key_mask"]]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert a is not None and a.shape == b.shape and a.dtype == b.dtype, name
        if b.abs().max() == 0:  # e.g. a single key: softmax is constant
            assert a.abs().max() < tol_bwd, name
        else:
            assert rel_err(a, b) < tol_bwd, name


@pytest.mark.parametrize("mask_pad", [None, 8])
def test_fully_masked_rows_match_the_reference_values_and_gradients(mask_pad, monkeypatch):
    """Also with the additive key mask padded to a length the key tiles do not divide
    (mask_pad=8: 21 keys -> 24, tiles of 16), where its loads take the bounds-checked path."""
    from pairformer_fb.kernel import triton_launch

    if mask_pad is not None:
        monkeypatch.setattr(triton_launch, "BIAS_TILE_PAD", mask_pad)
        assert triton_launch._additive_key_mask(torch.ones(1, 21, dtype=torch.bool)).shape[1] % 16 != 0
    args, kw = make_inputs(
        3, 2, 14, 21, 16, 4, bias_shape=(1, 2, 14, 21), mask_shape=(3, 21), fully_masked_rows=(0, 2), device=DEVICE
    )
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5
    ins = differentiable(args, kw)
    for a, b in zip(grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4


def test_partial_gradients_and_no_grad():
    args, kw = make_inputs(2, 2, 17, 17, 16, 4, bias_shape=(1, 2, 17, 17), device=DEVICE, requires_grad=False)
    kw["bias"].requires_grad_(True)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    (gb,) = torch.autograd.grad(out, [kw["bias"]], torch.ones_like(out))
    (rb,) = torch.autograd.grad(ref, [kw["bias"]], torch.ones_like(ref))
    assert rel_err(gb, rb) < 1e-4
    with torch.no_grad():
        assert rel_err(flash_bias_attention(*args, **kw, backend="triton"), ref) < 1e-5


def test_non_contiguous_views_are_read_in_place():
    # projections give [B, L, H, D]; the op takes them permuted to [B, H, L, D] without a copy
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 19, 3, 2, 16, generator=g).to(DEVICE)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    assert not q.is_contiguous()
    bias = torch.randn(19, 19, 2, generator=g).to(DEVICE).permute(2, 0, 1)[None]
    out = flash_bias_attention(q, k, v, bias=bias, backend="triton")
    ref = flash_bias_attention(q, k, v, bias=bias, backend="reference")
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("layout", ["token_major", "row_transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gate_fused_at_inference_and_differentiable_in_training(layout, dtype):
    """The gate as the triangle modules pass it: a strided view of a fused q/k/v/g projection,
    [a, c, 4, H, D] in memory with rows on a (starting node) or on c (ending node). Inference
    gates in the kernel's epilogue and writes o in the gate's layout; with gradients the op
    gates the differentiable output. Both equal sigmoid(gate) * reference."""
    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    n, H, D = 13, 2, 16
    proj = torch.randn(n, n, 4, H, D, generator=g).to(dtype).to(DEVICE)
    views = proj.unbind(2)  # [a, c, H, D]
    if layout == "row_transposed":
        views = [t.transpose(0, 1) for t in views]
    q, k, v, gate = (t.transpose(1, 2) for t in views)  # [rows, H, L, D]
    bias = torch.randn(1, H, n, n, generator=g).to(dtype).to(DEVICE)
    mask = (torch.rand(n, n, generator=g) > 0.3).to(DEVICE)
    ref = torch.sigmoid(gate.float()) * flash_bias_attention(
        q.float(), k.float(), v.float(), bias=bias.float(), key_mask=mask, backend="reference"
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    with torch.no_grad():
        out = flash_bias_attention(q, k, v, bias=bias, key_mask=mask, gate=gate, backend="triton")
    assert rel_err(out, ref) < tol
    # written in the gate's memory order: back in z's orientation it is one dense [a, c, H, D]
    zo = out.transpose(1, 2) if layout == "token_major" else out.transpose(1, 2).transpose(0, 1)
    assert zo.is_contiguous()
    ins = [t.detach().requires_grad_(True) for t in (q, k, v, gate)]
    out = flash_bias_attention(*ins[:3], bias=bias, key_mask=mask, gate=ins[3], backend="triton")
    assert rel_err(out, ref) < tol
    ins32 = [t.detach().float().requires_grad_(True) for t in ins]
    ref = torch.sigmoid(ins32[3]) * flash_bias_attention(
        *ins32[:3], bias=bias.float(), key_mask=mask, backend="reference"
    )
    for a, b in zip(grads(out, ins), grads(ref, ins32)):
        assert rel_err(a, b) < (1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("splits", [2, 3])
def test_row_split_ds_sum_matches_the_reference(splits, monkeypatch):
    """The dS row-sum split over several programs per tile (atomic partial sums) gives the same
    bias and shared-factor gradients."""
    from pairformer_fb.kernel import tiles

    args, kw = make_inputs(7, 2, 20, 18, 16, 4, bias_shape=(1, 2, 20, 18), mask_shape=(7, 18), device=DEVICE)
    block_d, block_r = tiles._pow2_at_least_16(16), tiles._pow2_at_least_16(4)
    elem = args[0].element_size()
    cfg = tiles.default_config("ds_sum", block_d, block_r, True, elem)
    monkeypatch.setitem(
        tiles.CONFIG_OVERRIDES,
        tiles.config_key("ds_sum", block_d, block_r, True, elem),
        tiles.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, 1, splits),
    )
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    names = ["q", "k", "v", "q_factors", "k_factors", "bias"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert rel_err(a, b) < 1e-4, name


@pytest.mark.parametrize(
    "case",
    [
        dict(rank=4, bias_shape=(1, 2, 20, 18), rows=2),  # shared factors + per-head bias, odd B (clamped row)
        dict(rank=0, bias_shape=(1, 2, 20, 18), rows=1),
        dict(rank=0, bias_shape=(1, 1, 20, 18), rows=2),  # bias shared by the heads too: summed over them
    ],
)
def test_fused_ds_in_backward_kernel_matches_the_reference(case, monkeypatch):
    """fuse_ds: the backward kernel adds the dS of its rows atomically into the row-shared sum
    (no _ds_sum_kernel pass): same bias and shared-factor gradients, also with a clamped last row."""
    from pairformer_fb.kernel import tiles, triton_launch

    args, kw = make_inputs(
        7, 2, 20, 18, 16, case["rank"], bias_shape=case["bias_shape"], mask_shape=(7, 18), device=DEVICE
    )
    block_d = tiles._pow2_at_least_16(16)
    block_r = tiles._pow2_at_least_16(case["rank"]) if case["rank"] else 0
    elem = args[0].element_size()
    cfg = tiles.default_config("bwd", block_d, block_r, True, elem)
    monkeypatch.setitem(
        tiles.CONFIG_OVERRIDES,
        tiles.config_key("bwd", block_d, block_r, True, elem),
        tiles.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, case["rows"], fuse_ds=True),
    )
    ran = []
    monkeypatch.setattr(triton_launch, "_ds_sum_kernel", ran)  # must not be launched
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert rel_err(a, b) < 1e-4, name


def test_launch_shrinks_tiles_that_need_too_much_shared_memory(monkeypatch):
    """A launch that Triton refuses for its shared memory is retried with smaller tiles (one row
    per program, fewer stages, then smaller blocks), and the tiles that fit are remembered."""
    from triton.runtime.errors import OutOfResources

    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(tiles, "_FITTED", {})
    args, kw = make_inputs(4, 2, 20, 20, 16, bias_shape=(1, 2, 20, 20), device=DEVICE)
    ops = triton_launch._Operands(*args, None, None, kw["bias"], None, 0.25)
    start = tiles.KernelConfig(64, 64, 4, 3, 2)
    monkeypatch.setattr(tiles, "_config", lambda kind, ops: start)
    tried = []

    def launch(cfg):
        tried.append(cfg)
        if cfg.block_n > 32:  # stands for: these tiles exceed the device's shared memory
            raise OutOfResources(262144, 232448, "shared memory")
        return "ran"

    assert tiles._launch("fwd", ops, torch.float32, launch) == "ran"
    assert [(c.rows, c.num_stages, c.block_n) for c in tried] == [
        (2, 3, 64),
        (1, 3, 64),
        (1, 2, 64),
        (1, 1, 64),
        (1, 1, 32),
    ]
    tried.clear()
    tiles._launch("fwd", ops, torch.float32, launch)  # remembered: straight to the tiles that fit
    assert [(c.rows, c.num_stages, c.block_n) for c in tried] == [(1, 1, 32)]

    def never(cfg):
        raise OutOfResources(1 << 30, 232448, "shared memory")

    with pytest.raises(OutOfResources):  # nothing left to shrink: the error is not swallowed
        tiles._launch("bwd", ops, torch.float32, never)


def test_shared_operands_get_16_byte_aligned_rows():
    """Shared operands whose rows are not 16-byte aligned are copied into padded rows (same
    values); aligned ones are passed through untouched."""
    from pairformer_fb.kernel.triton_launch import _row_aligned

    aligned = torch.randn(1, 2, 5, 16)
    assert _row_aligned(aligned) is aligned
    for t in (
        torch.randn(1, 2, 7, 35),
        torch.randn(1, 2, 35, 7).transpose(-1, -2),
        torch.randn(1, 2, 8, 17)[..., 1:],
        torch.ones(3, 21, dtype=torch.uint8),
    ):
        out = _row_aligned(t)
        align = 16 // t.element_size()
        assert torch.equal(out, t) and out.stride(-1) == 1
        assert all(s % align == 0 for s in out.stride()[:-1]) and out.data_ptr() % 16 == 0


def test_shared_bias_is_padded_to_whole_tiles():
    """A bias shared by several rows, of lengths that are not tile multiples, is read from
    zero-padded storage (unmasked tile loads) holding the same values; a bias of one row is not."""
    from pairformer_fb.kernel import tiles, triton_launch

    args, kw = make_inputs(3, 2, 18, 35, 16, bias_shape=(1, 2, 18, 35), requires_grad=False)
    ops = triton_launch._Operands(*args, None, None, kw["bias"], None, 0.25)
    assert ops.bias_padded and torch.equal(ops.bias[0], kw["bias"][0])
    pad = triton_launch.BIAS_TILE_PAD
    assert ops.bias.stride(2) == pad and ops.bias.stride(1) == pad**2
    assert ops.flags(tiles.KernelConfig(64, 64, 4, 3), "fwd")["BIAS_FULL_N"]
    assert not ops.flags(tiles.KernelConfig(64, 256, 4, 3), "fwd")["BIAS_FULL_N"]  # tiles wider than the padding
    single, kw1 = make_inputs(1, 2, 18, 35, 16, bias_shape=(1, 2, 18, 35), requires_grad=False)
    assert not triton_launch._Operands(*single, None, None, kw1["bias"], None, 0.25).bias_padded


def test_a_bias_prepared_for_reuse_is_read_without_a_copy():
    """prepare_reused_bias pads once; the op then reads that storage as it is (no per-call
    copy), also through reshaped views of it, and gives the reference's result; a view that
    would read past its buffer, or a plain tensor, is still copied."""
    from pairformer_fb.kernel import prepare_reused_bias, triton_launch

    args, kw = make_inputs(3, 2, 18, 35, 16, bias_shape=(1, 2, 18, 35), requires_grad=False, device=DEVICE)
    prepared = triton_launch.pad_bias_to_tiles(kw["bias"])  # what prepare_reused_bias does on CUDA
    assert torch.equal(prepared, kw["bias"])
    ops = triton_launch._Operands(*args, None, None, prepared.reshape(2, 18, 35)[None], None, 0.25)
    assert ops.bias_padded and ops.bias.data_ptr() == prepared.data_ptr()
    out = flash_bias_attention(*args, bias=prepared, backend="triton")
    assert rel_err(out, flash_bias_attention(*args, **kw, backend="reference")) < 1e-5
    # a view of the last rows: its padded tiles would run past the buffer -> copied
    buf = triton_launch.pad_bias_to_tiles(torch.randn(1, 2, 130, 35))._base  # [1, 2, 256, 128]
    assert triton_launch._in_padded_storage(buf[:, :, 120:130, :35])  # its 128-row tiles end inside the buffer
    assert not triton_launch._in_padded_storage(buf[:, :, 200:, :35])  # they would end past it
    assert not triton_launch._in_padded_storage(kw["bias"])
    if not kw["bias"].is_cuda:
        assert prepare_reused_bias(kw["bias"]) is kw["bias"]  # other devices: unchanged


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_every_grid_order_computes_the_same_attention(order, monkeypatch):
    """The program orders (blocks / heads / row groups fastest, chunks of row groups) only
    change which programs run side by side: values and gradients match the reference for each,
    with an odd row count (order 3: 5 rows in 3 row groups of two, chunks of 2 row groups, so
    the last chunk is short)."""
    from pairformer_fb.kernel import tiles

    monkeypatch.setattr(tiles, "_FORCED_GRID_ORDER", str(order))
    monkeypatch.setattr(tiles, "GRID_GROUP", 2)
    args, kw = make_inputs(5, 2, 18, 21, 16, 4, bias_shape=(1, 2, 18, 21), mask_shape=(5, 21), device=DEVICE)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert rel_err(out, ref) < 1e-5
    ins = differentiable(args, kw)
    for a, b in zip(grads(out, ins), grads(ref, ins)):
        assert rel_err(a, b) < 1e-4


def test_a_few_samples_sharing_a_bias_run_side_by_side():
    from pairformer_fb.kernel import tiles, triton_launch

    def order(B, bias_batch):
        args, kw = make_inputs(B, 2, 20, 20, 16, bias_shape=(bias_batch, 2, 20, 20), requires_grad=False)
        ops = triton_launch._Operands(*args, None, None, kw["bias"], None, 0.25)
        return tiles._grid_order(ops, 1)

    if tiles._FORCED_GRID_ORDER is None:
        assert order(5, 1) == 2  # diffusion samples sharing the bias
        assert order(64, 1) != 2 and order(5, 5) != 2  # triangle rows; a bias per row


def test_row_shared_operands_past_the_l2_share_take_the_chunked_program_order(monkeypatch):
    """GRID_ORDER 3 where the row-shared operand a kernel sweeps per row group is past its share
    of L2 (here 50 MiB): the backward's fp32 dS sum, only when it adds into one; the forward's
    dense bias, not factors. Otherwise the heads-fastest default."""
    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(tiles, "INTERPRET", False)
    monkeypatch.setattr(tiles, "cuda_properties", lambda device: types.SimpleNamespace(L2_cache_size=50 * 2**20))
    monkeypatch.setattr(tiles, "_FORCED_GRID_ORDER", None)
    monkeypatch.setattr(tiles, "_FORCED_GRID_ORDER_OF", {})

    def order(n, kind, sums_ds=False, bias=True, factors=False, bias_heads=4):
        q = torch.empty(64, 4, n, 32, dtype=torch.bfloat16)
        qf = torch.empty(1, 4, n, 16, dtype=torch.bfloat16) if factors else None
        b = torch.empty(1, bias_heads, n, n, dtype=torch.bfloat16) if bias else None
        ops = triton_launch._Operands(q, q, q, qf, qf, b, None, 0.2)
        ops.device = torch.device("cuda", 0)
        return tiles._grid_order(ops, 2, kind, sums_ds)

    assert (order(2048, "fwd"), order(2048, "bwd", True), order(2048, "bwd", False)) == (3, 3, 1)  # bias 32 MiB, dS 64
    assert (order(1536, "fwd"), order(1536, "bwd", True)) == (1, 3)  # bias 18 MiB, dS 36
    assert (order(1024, "fwd"), order(1024, "bwd", True)) == (1, 1)  # bias 8 MiB, dS 16
    assert (order(2048, "fwd", bias=False, factors=True), order(2048, "bwd", True, False, True)) == (1, 3)
    assert order(2048, "bwd", True, bias_heads=1) == 1  # a bias shared by the heads: its dS sum is 16 MiB


def _inputs_with_rows(case, kind, rows, monkeypatch, **changes):
    """make_inputs for a test case (B, H, Lq, Lk, D, R, bias, mask), with the ``kind`` kernel's
    default tiles overridden to ``rows`` rows per program (and ``changes``) for the test."""
    from pairformer_fb.kernel import tiles

    args, kw = make_inputs(
        case["B"], case["H"], case["Lq"], case["Lk"], case["D"], case["R"],
        bias_shape=case["bias"], mask_shape=case["mask"], factor_batch=case.get("factor_batch", 1), device=DEVICE,
    )  # fmt: skip
    block_d = tiles._pow2_at_least_16(case["D"])
    block_r = tiles._pow2_at_least_16(case["R"]) if case["R"] else 0
    key = tiles.config_key(kind, block_d, block_r, case["bias"] is not None, args[0].element_size())
    cfg = tiles.default_config(*key)
    monkeypatch.setitem(tiles.CONFIG_OVERRIDES, key, dataclasses.replace(cfg, rows=rows, **changes))
    return args, kw


@pytest.mark.parametrize(
    "case",
    [
        # B, H, Lq, Lk, D, R, bias_shape, mask_shape, rows; no length a multiple of the 16-wide tiles
        dict(B=7, H=2, Lq=20, Lk=18, D=16, R=0, bias=(1, 2, 20, 18), mask=(7, 18), rows=2),  # odd B: clamped row
        dict(B=4, H=2, Lq=21, Lk=19, D=24, R=4, bias=(1, 2, 21, 19), mask=None, rows=2),  # shared factors + bias
        dict(B=3, H=2, Lq=18, Lk=23, D=16, R=6, bias=None, mask=(3, 23), rows=1),  # shared factors only
        dict(B=3, H=2, Lq=20, Lk=18, D=16, R=0, bias=(1, 1, 20, 18), mask=(3, 18), rows=2),  # summed over heads too
        dict(B=1, H=3, Lq=19, Lk=21, D=16, R=0, bias=(1, 1, 19, 21), mask=(1, 21), rows=1),  # one row, heads summed
        dict(B=3, H=1, Lq=17, Lk=130, D=16, R=0, bias=(1, 1, 17, 130), mask=(3, 130), rows=2),  # keys past 128
    ],
)
def test_tile_padded_ds_sum_matches_the_reference(case, monkeypatch):
    """tiles.DS_TILE_PAD (on by default): the fused backward adds the row-shared dS unmasked into
    storage padded to whole tiles. Fresh random inputs, lengths that the tiles do not divide,
    key masks: every gradient matches the reference, and the launch took the unmasked path."""
    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(tiles, "DS_TILE_PAD", True)
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = _inputs_with_rows(case, "bwd", case["rows"], monkeypatch, fuse_ds=True)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert rel_err(out, ref) < 1e-5
    ins = differentiable(args, kw)
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
    assert spy.calls and all(c["FUSE_DS"] and c["DS_FULL"] for c in spy.calls)


@pytest.mark.parametrize(
    "case",
    [
        # B, H, Lq, Lk, D, R, bias_shape, mask_shape, rows the launch must take
        dict(B=8, H=2, Lq=20, Lk=18, D=16, R=0, bias=(1, 2, 20, 18), mask=(8, 18), rows=4),
        dict(B=7, H=2, Lq=21, Lk=19, D=24, R=4, bias=(1, 2, 21, 19), mask=None, rows=4),  # last group: 3 rows
        dict(B=5, H=1, Lq=17, Lk=23, D=16, R=6, bias=None, mask=(5, 23), rows=4),  # shared factors, 1 row left
        dict(B=3, H=2, Lq=18, Lk=18, D=16, R=0, bias=(1, 2, 18, 18), mask=(3, 18), rows=2),  # B < 4: two rows
        dict(B=6, H=2, Lq=18, Lk=18, D=16, R=0, bias=(6, 2, 18, 18), mask=None, rows=1),  # a bias per row
    ],
)
def test_forward_with_four_rows_per_program_matches_the_reference(case, monkeypatch):
    """KernelConfig.rows = 4 for the forward (issue 17: each shared bias / factor tile read once
    for four rows): outputs and gradients match the reference for B not a multiple of 4 (clamped
    rows write nothing), with masks; fewer rows than 4 take 2, a bias per row takes 1."""
    from pairformer_fb.kernel import triton_launch

    spy = LaunchSpy(triton_launch._fwd_kernel)
    monkeypatch.setattr(triton_launch, "_fwd_kernel", spy)
    args, kw = _inputs_with_rows(case, "fwd", 4, monkeypatch)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    assert [c["ROWS"] for c in spy.calls] == [case["rows"]]
    assert rel_err(out, ref) < 1e-5
    ins = differentiable(args, kw)
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name


@pytest.mark.parametrize(
    "case",
    [
        # B, H, Lq, Lk, D, R, bias_shape, mask_shape, rows the launch must take, fuse_ds
        dict(B=8, H=2, Lq=20, Lk=18, D=16, R=0, bias=(1, 2, 20, 18), mask=(8, 18), rows=4, fuse_ds=True),
        dict(B=7, H=2, Lq=21, Lk=19, D=24, R=4, bias=(1, 2, 21, 19), mask=None, rows=4, fuse_ds=True),  # 3 rows left
        dict(B=5, H=1, Lq=17, Lk=23, D=16, R=6, bias=None, mask=(5, 23), rows=4, fuse_ds=True),  # 1 row left
        # a bias shared by the heads too: the sum is over them as well
        dict(B=6, H=3, Lq=20, Lk=18, D=16, R=0, bias=(1, 1, 20, 18), mask=(6, 18), rows=4, fuse_ds=True),
        dict(B=7, H=2, Lq=20, Lk=18, D=16, R=0, bias=(1, 2, 20, 18), mask=(7, 18), rows=4, fuse_ds=False),  # ds_sum
        dict(B=3, H=2, Lq=18, Lk=18, D=16, R=0, bias=(1, 2, 18, 18), mask=(3, 18), rows=2, fuse_ds=True),  # B < 4
        dict(B=6, H=2, Lq=18, Lk=18, D=16, R=4, bias=None, mask=None, rows=1, fuse_ds=True, factor_batch=6),
    ],
)
def test_backward_with_four_rows_per_program_matches_the_reference(case, monkeypatch):
    """KernelConfig.rows = 4 for the backward (issue 17: a program's dS, summed over four rows,
    is added once into the row-shared sum, halving the reduce-adds of two rows): every gradient
    matches the reference for B not a multiple of 4 (clamped rows add and write nothing), with
    key masks, fused into the kernel or by the separate dS sum kernel; fewer rows than 4 take 2,
    factors per row (their gradients per row) take 1."""
    from pairformer_fb.kernel import triton_launch

    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = _inputs_with_rows(case, "bwd", 4, monkeypatch, fuse_ds=case["fuse_ds"])
    ins = differentiable(args, kw)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
    assert [c["ROWS"] for c in spy.calls] == [case["rows"]]
    assert spy.calls[0]["FUSE_DS"] == (case["fuse_ds"] and case["rows"] > 1)


def test_tile_overrides_refuse_rows_other_than_1_2_4(tmp_path):
    import json

    from pairformer_fb.kernel import tiles

    path = tmp_path / "tiles.json"
    path.write_text(json.dumps([dict(kind="bwd", block_d=16, block_r=0, has_bias=True, block_m=16, block_n=16,
                                     num_warps=1, num_stages=1, rows=3)]))  # fmt: skip
    with pytest.raises(ValueError, match="rows must be 1, 2 or 4"):
        tiles.load_config_overrides(str(path))
    assert not tiles.CONFIG_OVERRIDES


def test_ds_sum_keeps_bounds_masks_when_off_and_where_tiles_outgrow_the_padding(monkeypatch):
    """Off (PFB_DS_TILE_PAD=0: masked adds into the unpadded buffer); on, with padding narrower
    than the tiles (BIAS_TILE_PAD 8, tiles of 16), the launch keeps the masked adds: same gradients."""
    from pairformer_fb.kernel import tiles, triton_launch

    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = make_inputs(3, 2, 20, 18, 16, bias_shape=(1, 2, 20, 18), mask_shape=(3, 18), device=DEVICE)
    block_d = tiles._pow2_at_least_16(16)
    elem = args[0].element_size()
    cfg = tiles.default_config("bwd", block_d, 0, True, elem)
    monkeypatch.setitem(
        tiles.CONFIG_OVERRIDES,
        tiles.config_key("bwd", block_d, 0, True, elem),
        tiles.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, 2, fuse_ds=True),
    )
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    expected = grads(ref, ins)
    for pad_on, tile_pad in ((False, 128), (True, 8)):
        monkeypatch.setattr(tiles, "DS_TILE_PAD", pad_on)
        monkeypatch.setattr(triton_launch, "BIAS_TILE_PAD", tile_pad)
        spy.calls.clear()
        out = flash_bias_attention(*args, **kw, backend="triton")
        for a, b in zip(grads(out, ins), expected):
            assert rel_err(a, b) < 1e-4
        assert [(c["FUSE_DS"], c["DS_FULL"]) for c in spy.calls] == [(True, False)]


@pytest.mark.parametrize(
    "case",
    [
        # B = 1 and a bias with every head and both lengths: each dS tile has one writer
        dict(H=3, Lq=19, Lk=37, bias=(1, 3, 19, 37), mask=(1, 37), store=True),
        dict(H=1, Lq=33, Lk=18, bias=(1, 1, 33, 18), mask=None, store=True),
        dict(H=1, Lq=33, Lk=18, bias=(33, 18), mask=None, store=True),  # broadcast from 2-d: same shape
        # not single writers: heads summed, a broadcast query dim
        dict(H=3, Lq=19, Lk=21, bias=(1, 1, 19, 21), mask=None, store=False),
        dict(H=2, Lq=19, Lk=21, bias=(1, 2, 1, 21), mask=(1, 21), store=False),
    ],
)
@pytest.mark.parametrize(("pad", "fuse"), [(True, True), (False, True), (True, False)])
def test_one_row_bias_gradient_is_stored_by_its_only_writer(case, pad, fuse, monkeypatch):
    """One row (B = 1, the single attention) with a bias [1, H, Lq, Lk]: the backward stores each
    dS tile as the bias gradient in the bias dtype (no zeroed fp32 buffer, atomics or cast), with
    the padded dS sum on or off; other bias shapes keep the fused sum. Unfused tiles (a tuned
    override): the separate dS kernel writes that buffer. Fresh random inputs, lengths the tiles
    do not divide: every gradient matches the reference, and the launch took the path the case
    expects."""
    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(tiles, "DS_TILE_PAD", pad)
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = make_inputs(
        1, case["H"], case["Lq"], case["Lk"], 16, bias_shape=case["bias"], mask_shape=case["mask"], device=DEVICE
    )
    elem = args[0].element_size()
    cfg = tiles.default_config("bwd", 16, 0, True, elem)  # the interpreter's tiles, fused as on a GPU
    monkeypatch.setitem(
        tiles.CONFIG_OVERRIDES,
        tiles.config_key("bwd", 16, 0, True, elem),
        tiles.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, 1, fuse_ds=fuse),
    )
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    got = grads(out, ins)
    for name, a, b in zip(names, got, grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
    dbias = got[names.index("bias")]
    assert dbias.shape == kw["bias"].shape and dbias.dtype == kw["bias"].dtype
    assert spy.calls and all(c["FUSE_DS"] == fuse and c["DS_STORE"] == case["store"] for c in spy.calls)
    assert all(not (c["DS_STORE"] and c["DS_FULL"]) for c in spy.calls)


def _backward_matches_the_reference(case, monkeypatch):
    """The backward with the default tiles (or case["blocks"]: block_m, block_n) at two rows per
    program (or case["rows"]; its dS sum fused or not: case["fuse"]) for a case of make_inputs'
    arguments: gradients against the reference's. Returns the spy of the backward kernel's launches."""
    from pairformer_fb.kernel import tiles, triton_launch

    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = make_inputs(
        case["B"], case["H"], case["Lq"], case["Lk"], case["D"], case["R"], factor_batch=case["fb"],
        bias_shape=case["bias"], mask_shape=case["mask"], device=DEVICE,
    )  # fmt: skip
    block_d = tiles._pow2_at_least_16(case["D"])
    block_r = tiles._pow2_at_least_16(case["R"]) if case["R"] else 0
    elem = args[0].element_size()
    has_bias = case["bias"] is not None
    cfg = tiles.default_config("bwd", block_d, block_r, has_bias, elem)
    monkeypatch.setitem(
        tiles.CONFIG_OVERRIDES,
        tiles.config_key("bwd", block_d, block_r, has_bias, elem),
        tiles.KernelConfig(
            *case.get("blocks", (cfg.block_m, cfg.block_n)),
            cfg.num_warps,
            cfg.num_stages,
            case.get("rows", 2),
            fuse_ds=case["fuse"],
        ),
    )
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    names = ["q", "k", "v"] + [n for n in kw if n != "key_mask"]
    for name, a, b in zip(names, grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
    return spy


@pytest.mark.parametrize(
    "case",
    [
        # several key and query blocks (16-wide tiles), lengths they do not divide
        dict(B=5, H=2, Lq=37, Lk=41, D=16, R=0, fb=1, bias=(1, 2, 37, 41), mask=(5, 41), fuse=True, pad=True),
        dict(B=3, H=2, Lq=35, Lk=33, D=24, R=5, fb=1, bias=(1, 2, 35, 33), mask=None, fuse=False, pad=False),
        dict(B=2, H=2, Lq=33, Lk=47, D=16, R=4, fb=2, bias=None, mask=(2, 47), fuse=True, pad=False),  # row factors
    ],
)
def test_staggered_query_block_loop_matches_the_reference(case, monkeypatch):
    """tiles.DQ_STAGGER (opt-in): each key block of a row group starts its query-block loop
    at another block. Only the order of the sums changes: the gradients match the reference."""
    from pairformer_fb.kernel import tiles

    monkeypatch.setattr(tiles, "DQ_STAGGER", True)
    monkeypatch.setattr(tiles, "DS_TILE_PAD", case["pad"])
    spy = _backward_matches_the_reference(case, monkeypatch)
    assert spy.calls and all(c["STAGGER_KB"] for c in spy.calls)
    assert all(c["DS_FULL"] == (case["pad"] and c["FUSE_DS"]) for c in spy.calls)


def test_bulk_reduce_adds_fall_back_to_atomics_without_a_hopper_device(monkeypatch):
    """tiles.TMA_REDUCE (on by default) asks for the copy engine's bulk reduce-adds, which the
    interpreter and devices before compute capability 9 lack: there the backward keeps its
    atomics and stays exact; an unknown kind is one line naming the setting."""
    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset({"dq", "ds"}))
    spy = LaunchSpy(triton_launch._bwd_kernel)
    monkeypatch.setattr(triton_launch, "_bwd_kernel", spy)
    args, kw = make_inputs(5, 2, 37, 41, 16, 0, bias_shape=(1, 2, 37, 41), mask_shape=(5, 41), device=DEVICE)
    out = flash_bias_attention(*args, **kw, backend="triton")
    ref = flash_bias_attention(*args, **kw, backend="reference")
    ins = differentiable(args, kw)
    for name, a, b in zip(["q", "k", "v", "bias"], grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
    assert spy.calls and not any(c["TMA_DQ"] or c["TMA_DS"] for c in spy.calls)
    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset({"dQ"}))  # a typo: rejected when the op is called
    with pytest.raises(ValueError, match=r"PFB_TMA_REDUCE \(tiles.TMA_REDUCE\): expected 0 or .*got \['dQ'\]"):
        flash_bias_attention(*args, **kw, backend="triton")


_MIN_SCORES_ERROR = "PFB_TMA_REDUCE_MIN_SCORES: expected a non-negative integer (scores per backward); got "


def test_bulk_reduce_adds_only_from_the_size_where_the_host_is_not_the_bound(monkeypatch):
    """tiles.TMA_REDUCE_MIN_SCORES: on a compute capability 9 device the backward takes the bulk
    reduce-adds from that many scores (B H Lq Lk) on, and none below (their descriptors cost more
    host time than they save); 0 takes them at every size; older devices never."""
    from types import SimpleNamespace

    from pairformer_fb.kernel import tiles, triton_launch

    monkeypatch.setattr(triton_launch, "INTERPRET", False)
    major = {"value": 9}
    monkeypatch.setattr(tiles, "cuda_properties", lambda device: SimpleNamespace(major=major["value"]))
    kinds = lambda n, b=None, h=4: triton_launch._tma_reduce_kinds(torch.device("cuda"), (b or n) * h * n * n)  # noqa: E731
    monkeypatch.setattr(tiles, "TMA_REDUCE", frozenset({"dq", "ds"}))  # the defaults (whatever the environment)
    monkeypatch.setattr(tiles, "TMA_REDUCE_MIN_SCORES", 2**28)
    assert kinds(256) == kinds(384) == frozenset()  # the triangle's host-bound sizes
    assert kinds(512) == kinds(1024) == {"dq", "ds"}
    assert kinds(384, b=1, h=16) == frozenset()  # the single attention
    monkeypatch.setattr(tiles, "TMA_REDUCE_MIN_SCORES", 0)
    assert kinds(16, b=1, h=1) == {"dq", "ds"}
    major["value"] = 8
    assert kinds(1024) == frozenset()
    assert triton_launch._tma_reduce_kinds(torch.device("cpu"), 2**40) == frozenset()


@pytest.mark.parametrize(
    "name, value, needle",
    [
        ("PFB_GRID_ORDER", "4", "PFB_GRID_ORDER: expected a program order 0, 1, 2 or 3; got '4'"),
        ("PFB_GRID_ORDER_BWD", "x", "PFB_GRID_ORDER_BWD: expected a program order 0, 1, 2 or 3; got 'x'"),
        ("PFB_GRID_GROUP", "0", "PFB_GRID_GROUP: expected a positive integer (row groups per chunk); got '0'"),
        ("PFB_GRID_GROUP", "eight", "PFB_GRID_GROUP: expected a positive integer (row groups per chunk); got 'eight'"),
        ("PFB_TMA_REDUCE_MIN_SCORES", "-1", f"{_MIN_SCORES_ERROR}'-1'"),
        ("PFB_TMA_REDUCE_MIN_SCORES", "2e8", f"{_MIN_SCORES_ERROR}'2e8'"),
    ],
)
def test_bad_kernel_settings_are_one_line_at_the_call_not_at_import(name, value, needle):
    """The program-order variables and the bulk reduce-adds' size threshold are read at import; a
    bad value imports cleanly and is named in one line when the op is called, before any work."""
    code = (
        "import torch; from pairformer_fb import flash_bias_attention\n"
        "q = torch.randn(2, 1, 8, 16)\n"
        "try:\n    flash_bias_attention(q, q, q, backend='triton')\nexcept ValueError as e:\n    print(e)"
    )
    env = {**os.environ, name: value, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.strip() == needle


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's emulated bulk reduce-adds")
@pytest.mark.parametrize(
    "case",
    [
        # odd B (a clamped second row), lengths the 16-wide tiles do not divide, the bias's heads kept
        dict(B=5, H=2, Lq=37, Lk=41, D=16, R=0, fb=1, bias=(1, 2, 37, 41), mask=(5, 41), fuse=True),
        # shared factors and a bias shared by the heads: the sum keeps the heads
        dict(B=3, H=2, Lq=35, Lk=33, D=24, R=5, fb=1, bias=(1, 1, 35, 33), mask=None, fuse=True),
        # the heads summed too (a bias shared by the heads, no factors); query and key tiles of two widths
        dict(B=4, H=3, Lq=20, Lk=70, D=16, R=0, fb=1, bias=(1, 1, 20, 70), mask=None, fuse=True, blocks=(16, 32)),
        dict(B=2, H=2, Lq=33, Lk=47, D=16, R=4, fb=2, bias=None, mask=(2, 47), fuse=True),  # row factors
        # four rows per program (session 14), the last group of three: its clamped row adds zeros
        dict(B=7, H=2, Lq=37, Lk=41, D=16, R=0, fb=1, bias=(1, 2, 37, 41), mask=(7, 41), fuse=True, rows=4),
    ],
)
def test_bulk_reduce_adds_match_the_reference_in_the_interpreter(case, monkeypatch):
    """tiles.TMA_REDUCE's code path (dQ and the fused dS sum by bulk tensor reduce-adds), run by
    the interpreter with the reduce-add it lacks emulated as Triton's hardware does it: the
    descriptor's tile, its out-of-bounds part dropped, added to global memory."""
    import triton.runtime.interpreter as interpreter
    from triton._C.libtriton import ir

    from pairformer_fb.kernel import triton_launch

    def create_descriptor_reduce(self, kind, desc, value, indices):
        assert kind == ir.DESCRIPTOR_REDUCE_KIND.ADD, kind
        ptrs, in_bounds = desc.materialize_pointers(indices)
        return self.create_atomic_rmw(
            ir.ATOMIC_OP.FADD, ptrs, value, in_bounds, ir.MEM_SEMANTIC.RELAXED, ir.MEM_SYNC_SCOPE.GPU
        )

    monkeypatch.setattr(
        interpreter.InterpreterBuilder, "create_descriptor_reduce", create_descriptor_reduce, raising=False
    )
    monkeypatch.setattr(triton_launch, "_tma_reduce_kinds", lambda device, scores: frozenset({"dq", "ds"}))
    spy = _backward_matches_the_reference(case, monkeypatch)
    assert spy.calls and all(c["TMA_DQ"] for c in spy.calls)
    assert all(c["ROWS"] == case.get("rows", c["ROWS"]) for c in spy.calls)
    row_factors = case["fb"] > 1
    assert all(c["TMA_DS"] == (not row_factors) for c in spy.calls)


def test_bulk_reduce_descriptors_only_where_the_copy_engine_was_run():
    """The bulk reduce-adds' descriptors: None (the atomics stay) for a last dim that is not
    contiguous, strides not 16-byte aligned, or tile rows wider than 64 floats (never run on a
    device); else the accumulator's shape and strides with the tile as block."""
    from pairformer_fb.kernel.triton_launch import _tma_descriptor

    acc = torch.zeros(2, 3, 40, 32)
    d = _tma_descriptor(acc, (1, 1, 16, 32))
    assert d is not None and list(d.shape) == [2, 3, 40, 32] and list(d.strides) == list(acc.stride())
    assert list(d.block_shape) == [1, 1, 16, 32]
    assert _tma_descriptor(torch.zeros(2, 3, 40, 128), (1, 1, 16, 128)) is None  # 512-byte tile rows
    assert _tma_descriptor(acc.transpose(2, 3), (1, 1, 16, 32)) is None  # last dim not contiguous
    assert _tma_descriptor(torch.zeros(2, 3, 40, 30)[..., :27], (1, 1, 16, 32)) is None  # 120-byte rows


def test_keys_past_lk_are_excluded_by_the_padded_bias_itself(monkeypatch):
    """KEY_MASK 3 (issue 17): a shared bias in tile-padded storage is -inf past Lk, so no key
    mask and no select per score; a narrower slice of such storage (real values past its Lk)
    keeps the select. Both equal the reference, forward and gradients."""
    from pairformer_fb.kernel import triton_launch

    spies = {k: LaunchSpy(getattr(triton_launch, k)) for k in ("_fwd_kernel", "_bwd_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(triton_launch, name, spy)
    args, kw = make_inputs(3, 2, 18, 35, 16, 0, bias_shape=(1, 2, 18, 35), device=DEVICE)
    wide = triton_launch.pad_bias_to_tiles(torch.randn(1, 2, 18, 50, generator=torch.Generator().manual_seed(1)))
    # the op's own padded copy; a slice of storage padded for 50 keys, read in place (no copy;
    # a bias needing no gradient: a view's .requires_grad_ would detach it from that storage)
    for bias, key_mask in ((kw["bias"], 3), (wide[..., :35], 0)):
        spies["_fwd_kernel"].calls.clear(), spies["_bwd_kernel"].calls.clear()
        assert triton_launch._in_padded_storage(bias) == (key_mask == 0)
        out = flash_bias_attention(*args, bias=bias, backend="triton")
        ref = flash_bias_attention(*args, bias=bias, backend="reference")
        assert rel_err(out, ref) < 1e-5
        ins = differentiable(args, {"bias": bias} if bias.requires_grad else {})
        for name, a, b in zip(["q", "k", "v", "bias"], grads(out, ins), grads(ref, ins)):
            assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
        launches = spies["_fwd_kernel"].calls + spies["_bwd_kernel"].calls
        assert len(launches) == 2 and {c["KEY_MASK"] for c in launches} == {key_mask}


@pytest.mark.parametrize("mask", ["scalar", "one_by_one", "rows_by_one"])
def test_key_masks_broadcast_along_the_keys_match_the_reference(mask):
    """A key mask of size 1 along the keys (legal: broadcastable to [B, Lk]) masks or keeps every
    key of its rows; the kernels read one entry per key, so the op widens it first (session 14:
    without that the Triton path attended to key 0 alone)."""
    g = torch.Generator().manual_seed(3)
    B, H, L, D = 3, 2, 20, 16
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(DEVICE).requires_grad_(True) for _ in range(3))
    bias = torch.randn(1, H, L, L, generator=g).to(DEVICE).requires_grad_(True)
    key_mask = {
        "scalar": torch.tensor(True),
        "one_by_one": torch.ones(1, 1, dtype=torch.bool),
        "rows_by_one": torch.tensor([[True], [False], [True]]),  # row 1 fully masked: a uniform average
    }[mask].to(DEVICE)
    out = flash_bias_attention(q, k, v, bias=bias, key_mask=key_mask, backend="triton")
    ref = flash_bias_attention(q, k, v, bias=bias, key_mask=key_mask, backend="reference")
    assert rel_err(out, ref) < 1e-5
    ins = [q, k, v, bias]
    for name, a, b in zip(["q", "k", "v", "bias"], grads(out, ins), grads(ref, ins)):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-4, name
