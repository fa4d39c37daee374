"""Host side of the FlashBias Triton kernels (``triton_kernels``): operand preparation (stride-0
views, 16-byte aligned rows, the tile-padded bias and the additive key mask), the forward and
backward launches with the tiles of ``tiles``, and the autograd function.

Inputs reach this module validated and normalised by ``op.flash_bias_attention``.
"""

from __future__ import annotations

import weakref

import torch

from . import tiles
from .reference import MASK_NEG
from .tiles import INTERPRET, KernelConfig, _grid_order, _launch, _pow2_at_least_16, _rows_per_program, cdiv
from .triton_backward import _bwd_delta_kernel, _bwd_kernel, _ds_sum_kernel
from .triton_kernels import _fwd_kernel


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own switch for fp32 matmuls: tf32 only where the user allowed it.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    if t is None:
        return (0, 0, 0, 0)
    s0, s1, s2, s3 = t.stride()
    return s0, s1, s2, s3


def _new_like_layout(t: torch.Tensor, dtype: torch.dtype | None = None, zero: bool = False) -> torch.Tensor:
    """A new dense tensor of t's shape whose dims are laid out in memory in the order of t's
    strides. q / k / v usually are strided views of a fused projection ([B, L, H, D] or, for
    the triangle ending node, [L, B, H, D] in memory); outputs and gradients in their input's
    layout spare callers a transpose copy (torch.empty_like falls back to contiguous for such
    non-dense views)."""
    new = torch.zeros if zero else torch.empty
    if t.is_contiguous():  # the common case, without the stride sort (host time per call)
        return new(t.shape, device=t.device, dtype=dtype or t.dtype)
    # outermost first; ties (size-1 or broadcast dims) keep their logical order
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda d: (-strides[d], d))
    buf = new([t.shape[d] for d in order], device=t.device, dtype=dtype or t.dtype)
    return buf.permute([order.index(d) for d in range(t.dim())])


def _or(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument the kernel does not touch when its feature flag is off."""
    return t if t is not None else placeholder


def _row_aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous and every other stride (and the start) is a
    multiple of 16 bytes; else a copy into rows padded to 16 bytes (returned as a view of the
    first ``t.shape[-1]`` columns). Triton vectorises a tile load only where it can prove that
    alignment. (Measured on its own it did not explain the slow N = 1170 dense-bias forward:
    7.23 ms with aligned rows as without; the bounds mask did, see ``pad_bias_to_tiles``.) Used
    for operands shared by every row, where the copy is N times smaller than what the kernel
    reads."""
    align = max(1, 16 // t.element_size())
    n = t.shape[-1]
    if n == 1 or (
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and all(st % align == 0 for st, size in zip(t.stride()[:-1], t.shape[:-1]) if size > 1)
    ):
        return t
    buf = torch.empty((*t.shape[:-1], -(-n // align) * align), dtype=t.dtype, device=t.device)
    view = buf[..., :n]
    view.copy_(t)
    return view


# a shared bias is copied into padded storage whose dims are multiples of this (every tile
# config's block_m / block_n divides it), so that its tile loads need no bounds mask
BIAS_TILE_PAD = 128


# the padded buffers made by pad_bias_to_tiles, by id (a view's ._base is its buffer)
_TILE_PADDED: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def _tile_extent(n: int) -> int:
    return -(-n // BIAS_TILE_PAD) * BIAS_TILE_PAD


def pad_bias_to_tiles(bias: torch.Tensor) -> torch.Tensor:
    """[..., Lq, Lk] -> the same values in padded storage [..., Lq', Lk'] (multiples of
    BIAS_TILE_PAD), returned as a view of the first Lq x Lk. The kernels read such a bias tile
    by tile without bounds masks; a bias that lives across many calls (the diffusion module's,
    fixed for all steps) is padded once with this, and the op then uses it as it is.

    Why: a bounds mask along the key dim (contiguous in memory) makes Triton load the bias tile
    element by element: at N = 1170 (not a multiple of the block) the dense-bias forward took
    7.23 ms against 3.72 at N = 1152 (H200, benchmarks/attention_h200/n1152_n1170_before_padding/);
    padded: 5.09."""
    *lead, lq, lk = bias.shape
    buf = torch.empty((*lead, _tile_extent(lq), _tile_extent(lk)), dtype=bias.dtype, device=bias.device)
    # -inf in the key columns past Lk: the padding excludes those keys itself, so the kernels
    # need no select per score there (KEY_MASK 3); 0 in the rows past Lq
    buf[..., :lq, lk:] = float("-inf")
    buf[..., lq:, :] = 0
    buf._pfb_key_extent = lk  # type: ignore[attr-defined]  # where its -inf columns start
    _TILE_PADDED[id(buf)] = buf
    view = buf[..., :lq, :lk]
    view.copy_(bias)
    return view


def _keys_excluded_by_padding(t: torch.Tensor) -> bool:
    """Whether t, in padded storage (``_in_padded_storage``), spans whole rows of its buffer up
    to the buffer's -inf key padding: its columns past Lk are that padding, not more real
    columns of a wider bias."""
    base = t._base
    return (
        base is not None
        and getattr(base, "_pfb_key_extent", None) == t.shape[-1]
        and (t.storage_offset() - base.storage_offset()) % base.stride(-2) == 0
    )


def _in_padded_storage(t: torch.Tensor) -> bool:
    """Whether t is a view into a pad_bias_to_tiles buffer whose whole tiles (rows and keys
    rounded up to BIAS_TILE_PAD) stay inside that buffer: its padding holds no NaN, so the reads
    past Lq / Lk are harmless (those keys get -inf, from the padding or the kernels' select;
    those query rows are never written)."""
    base = t._base
    if base is None or _TILE_PADDED.get(id(base)) is not base or t.stride(-1) != 1:
        return False
    last = t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape[:-2], t.stride()[:-2]))
    last += (_tile_extent(t.shape[-2]) - 1) * t.stride(-2) + _tile_extent(t.shape[-1]) - 1
    return last < base.storage_offset() + base.numel()


def _additive_key_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """bool [B', Lk] -> the additive key mask the kernels add to each row's scores: fp32
    [B', Lk'] (Lk' a multiple of BIAS_TILE_PAD) holding 0 for a kept key, -1e9 for a masked one
    (the hosts' 1e9 * (mask - 1)) and -inf past Lk, returned whole (its padding is read).

    Loading the bool mask per key tile and selecting on it cost the triangle forward 24 % at
    N = 1024 and 67 % at N = 1170 (8.61 against 5.14 ms; bounds-masked byte loads), H200,
    benchmarks/session3/run1/tri.txt. The padded fp32 row loads unmasked and vectorised, one
    add per score, and its -inf padding replaces the separate key-bounds select."""
    rows, lk = key_mask.shape
    buf = torch.full((rows, _tile_extent(lk)), float("-inf"), dtype=torch.float32, device=key_mask.device)
    buf[:, :lk] = (~key_mask).to(torch.float32) * -MASK_NEG
    return buf


class _Operands:
    """Expanded (stride-0) views of the optional operands, and the launch constants."""

    def __init__(self, q, k, v, q_factors, k_factors, bias, key_mask, scale):
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        self.B, self.H, self.Lq, self.Lk, self.D = B, H, Lq, Lk, D
        self.device = q.device
        # shared operands (one copy for every row) with 16-byte aligned rows; the mask is small
        if q_factors is not None and q_factors.shape[0] == 1:
            q_factors, k_factors = _row_aligned(q_factors), _row_aligned(k_factors)
        # a bias shared by several rows whose tile dims are not block multiples: padded, so its
        # tiles load unmasked (the copy is B times smaller than what the kernels read)
        self.bias_padded = (
            bias is not None
            and bias.shape[0] == 1
            and B > 1
            and tuple(bias.shape[2:]) == (Lq, Lk)
            and (Lq % BIAS_TILE_PAD != 0 or Lk % BIAS_TILE_PAD != 0)
        )
        if self.bias_padded and not _in_padded_storage(bias):
            bias = pad_bias_to_tiles(bias)
        elif bias is not None and bias.shape[0] == 1:
            bias = _row_aligned(bias)
        if key_mask is not None:
            key_mask = _additive_key_mask(key_mask)
        # the kernels' KEY_MASK 3: the bias's padding excludes the keys past Lk
        self.keys_excluded_by_bias = self.bias_padded and _keys_excluded_by_padding(bias)
        self.has_factors = q_factors is not None
        self.q_factors_batch = q_factors.shape[0] if self.has_factors else 0
        self.bias_shape = tuple(bias.shape) if bias is not None else None
        self.bias_dtype = bias.dtype if bias is not None else None
        self.R = q_factors.shape[-1] if self.has_factors else 0
        self.qf = q_factors.expand(B, H, Lq, self.R) if self.has_factors else None
        self.kf = k_factors.expand(B, H, Lk, self.R) if self.has_factors else None
        self.bias = bias.expand(B, H, Lq, Lk) if bias is not None else None
        self.mask = key_mask.expand(B, key_mask.shape[1]) if key_mask is not None else None
        self.scale = float(scale)
        self.block_d = _pow2_at_least_16(D)
        self.block_r = _pow2_at_least_16(self.R) if self.has_factors else 16
        self.precision = _precision(q.dtype)
        self.elem_bytes = q.element_size()

    def pointer_args(self, q):
        return (
            self.qf if self.qf is not None else q,
            self.kf if self.kf is not None else q,
            self.bias if self.bias is not None else q,
            self.mask if self.mask is not None else q,
        )

    def stride_args(self):
        mask_strides = tuple(self.mask.stride()) if self.mask is not None else (0, 0)
        return (*_strides4(self.qf), *_strides4(self.kf), *_strides4(self.bias), *mask_strides)

    def flags(self, cfg: KernelConfig, kind: str, sums_ds: bool = False):
        """Constexpr flags of a ``kind`` launch ("fwd", "bwd", "ds_sum") with tiles ``cfg``:
        features present, which dims divide into whole blocks (their loads go unmasked), the
        program order (``sums_ds``: the backward adds into the row-shared dS sum)."""
        return dict(
            HAS_FACTORS=self.has_factors,
            HAS_BIAS=self.bias is not None,
            KEY_MASK=(3 if self.keys_excluded_by_bias and BIAS_TILE_PAD % cfg.block_n == 0 else 0)
            if self.mask is None
            else (1 if self.mask.shape[1] % cfg.block_n == 0 else 2),
            PRECISION=self.precision,
            BLOCK_D=self.block_d,
            BLOCK_R=self.block_r,
            EVEN_M=self.Lq % cfg.block_m == 0,
            EVEN_N=self.Lk % cfg.block_n == 0,
            EVEN_D=self.D == self.block_d,
            EVEN_R=self.R == self.block_r,
            BIAS_FULL_M=self.Lq % cfg.block_m == 0 or (self.bias_padded and BIAS_TILE_PAD % cfg.block_m == 0),
            BIAS_FULL_N=self.Lk % cfg.block_n == 0 or (self.bias_padded and BIAS_TILE_PAD % cfg.block_n == 0),
            GRID_ORDER=_grid_order(self, _rows_per_program(self, cfg), "fwd" if kind == "fwd" else "bwd", sums_ds),
            GRID_GROUP=tiles.GRID_GROUP,
        )


def _forward(q, k, v, ops: _Operands, gate: torch.Tensor | None = None):
    """o (gated by sigmoid(gate) when given, which only the inference path does) and the
    per-row softmax statistics (max, 1 / sum) for the backward."""
    B, H, Lq, Lk, D = ops.B, ops.H, ops.Lq, ops.Lk, ops.D
    o = _new_like_layout(gate if gate is not None else q)
    row_stats = torch.empty((2, B, H, Lq), device=q.device, dtype=torch.float32)
    qf, kf, bias, mask = ops.pointer_args(q)

    def launch(cfg):
        rows = _rows_per_program(ops, cfg)
        n_qblocks = cdiv(Lq, cfg.block_m)
        _fwd_kernel[(n_qblocks * H * cdiv(B, rows),)](
            q,
            k,
            v,
            qf,
            kf,
            bias,
            mask,
            o,
            row_stats[0],
            row_stats[1],
            _or(gate, q),
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *ops.stride_args(),
            *o.stride(),
            *_strides4(gate),
            B,
            H,
            Lq,
            Lk,
            D,
            ops.R,
            n_qblocks,
            ops.scale,
            **ops.flags(cfg, "fwd"),
            HAS_GATE=gate is not None,
            ROWS=rows,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )

    _launch("fwd", ops, q.dtype, launch)
    return o, row_stats


def _reduced_ds_buffer(ops: _Operands, bias_grad: bool, shared_factor_grad: bool, device, tile_padded: bool = False):
    """fp32 buffer for dS summed over the broadcast dims that the needed gradients share.

    tile_padded (tiles.DS_TILE_PAD): storage [.., Lq', Lk'] padded to whole BIAS_TILE_PAD tiles
    (returned as a view of the first Lq x Lk), so the fused backward adds whole tiles into it
    without a bounds mask, through 16-byte aligned rows at any length."""
    B, H = ops.B, ops.H
    bias_b, bias_h = (ops.bias_shape[0], ops.bias_shape[1]) if bias_grad else (1, 1)
    keep_b = bias_grad and bias_b == B and B > 1
    keep_h = H > 1 and ((bias_grad and bias_h == H) or shared_factor_grad)
    lead = (B if keep_b else 1, H if keep_h else 1)
    if tile_padded:
        buf = torch.empty((*lead, _tile_extent(ops.Lq), _tile_extent(ops.Lk)), device=device, dtype=torch.float32)
        return buf[..., : ops.Lq, : ops.Lk]
    # rows padded to 16 bytes (see _row_aligned): the kernel stores (or adds) whole tiles into it
    lk_padded = -(-ops.Lk // 4) * 4
    return torch.empty((*lead, ops.Lq, lk_padded), device=device, dtype=torch.float32)[..., : ops.Lk]


def _tma_reduce_kinds(device: torch.device, scores: int) -> frozenset:
    """The kinds of backward atomics (tiles.TMA_REDUCE) that go by bulk tensor reduce-add on this
    device for a backward of ``scores`` scores (B H Lq Lk): none in the interpreter, before
    compute capability 9, or below tiles.TMA_REDUCE_MIN_SCORES (where the host is the bound)."""
    tiles.check_env_settings()
    if not tiles.TMA_REDUCE or INTERPRET or device.type != "cuda" or scores < tiles.TMA_REDUCE_MIN_SCORES:
        return frozenset()
    return tiles.TMA_REDUCE if tiles.cuda_properties(device).major >= 9 else frozenset()


def _tma_descriptor(t: torch.Tensor, block: tuple[int, ...]):
    """A host-side tensor descriptor of the fp32 accumulator t for bulk reduce-adds of ``block``
    tiles, or None where the copy engine cannot address it (its last dim must be contiguous and
    the other strides and the base 16-byte aligned) or the tile's rows are wider than 256 bytes
    (64 floats: the widest that has run on a device, benchmarks/session11/bwd_tma_h100/)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    size = t.element_size()
    aligned = t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in t.stride()[:-1])
    if not aligned or block[-1] * size > 256:
        return None
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block))


def _backward(q, k, v, o, row_stats, do, ops: _Operands, needs: tuple[bool, ...]):
    B, H, Lq, Lk, D = ops.B, ops.H, ops.Lq, ops.Lk, ops.D
    need_factor_grad = ops.has_factors and (needs[3] or needs[4])
    shared_factors = ops.has_factors and ops.q_factors_batch == 1 and B > 1
    row_factor_grad = need_factor_grad and not shared_factors
    bias_grad = ops.bias is not None and needs[5]
    shared_factor_grad = need_factor_grad and shared_factors
    sum_ds = bias_grad or shared_factor_grad

    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    dm = 16 if INTERPRET else 64
    n_dblocks = cdiv(Lq, dm)
    _bwd_delta_kernel[(n_dblocks * B * H,)](
        o,
        do,
        delta,
        *o.stride(),
        *do.stride(),
        H,
        Lq,
        D,
        n_dblocks,
        BLOCK_M=dm,
        BLOCK_D=ops.block_d,
        EVEN_M=Lq % dm == 0,
        EVEN_D=D == ops.block_d,
    )

    dk = _new_like_layout(k)
    dv = _new_like_layout(v)
    dq_acc = _new_like_layout(q, torch.float32, zero=True)  # atomic adds, cast at the end
    dkf = torch.empty((B, H, Lk, ops.R), device=q.device, dtype=q.dtype) if row_factor_grad else None
    dqf_acc = torch.zeros((B, H, Lq, ops.R), device=q.device, dtype=torch.float32) if row_factor_grad else None
    qf, kf, bias, mask = ops.pointer_args(q)

    # dS summed over the rows sharing the bias / factors: by the bwd kernel's atomics (fuse_ds)
    # or by the separate _ds_sum_kernel. One row (B = 1) and a bias with every head and both
    # lengths (the single attention's [1, H, L, L]): nothing to sum, each dS tile is written by
    # one program, so the kernel stores it as the bias gradient itself (bias dtype, no zeroing,
    # no atomics, no cast; the fp32 sum's values rounded once, as before)
    ds_single_writer = (
        bias_grad and not shared_factor_grad and not row_factor_grad and B == 1 and ops.bias_shape == (1, H, Lq, Lk)
    )
    ds_tile_padded = sum_ds and tiles.DS_TILE_PAD and not ds_single_writer
    g: torch.Tensor | None = None
    if ds_single_writer:
        g = torch.empty(ops.bias_shape, device=q.device, dtype=ops.bias_dtype)
    elif sum_ds:
        g = _reduced_ds_buffer(ops, bias_grad, shared_factor_grad, q.device, ds_tile_padded)
    fused_ds = False
    tma = _tma_reduce_kinds(q.device, B * H * Lq * Lk)

    def launch_bwd(cfg):
        nonlocal fused_ds
        rows = 1 if row_factor_grad else _rows_per_program(ops, cfg)
        fused_ds = bool(cfg.fuse_ds and sum_ds and g.shape[0] == 1 and not row_factor_grad)
        # whole tiles of the padded dS storage: its adds need no bounds mask
        ds_full = fused_ds and ds_tile_padded and BIAS_TILE_PAD % cfg.block_m == 0 and BIAS_TILE_PAD % cfg.block_n == 0
        if fused_ds and not ds_single_writer:
            (g._base if ds_tile_padded else g).zero_()
        gh_stride = g.stride(1) if (fused_ds and g.shape[1] > 1) else 0
        # tiles.TMA_REDUCE: descriptors for the bulk reduce-adds (None: per-thread atomics)
        dq_desc = ds_desc = None
        if "dq" in tma:
            dq_desc = _tma_descriptor(dq_acc, (1, 1, cfg.block_m, ops.block_d))
        if "ds" in tma and fused_ds and not ds_single_writer:
            ds_desc = _tma_descriptor(g[0], (1, cfg.block_m, cfg.block_n))
        n_kblocks = cdiv(Lk, cfg.block_n)
        _bwd_kernel[(n_kblocks * H * cdiv(B, rows),)](
            q,
            k,
            v,
            qf,
            kf,
            bias,
            mask,
            do,
            row_stats[0],
            row_stats[1],
            delta,
            dk,
            dv,
            dq_acc,
            _or(dkf, dk),
            _or(dqf_acc, dq_acc),
            g if fused_ds else dq_acc,
            dq_desc,
            ds_desc,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *ops.stride_args(),
            *do.stride(),
            *dk.stride(),
            *dv.stride(),
            *dq_acc.stride(),
            *_strides4(dkf),
            *_strides4(dqf_acc),
            gh_stride,
            *(g.stride()[2:] if fused_ds else (0, 0)),
            B,
            H,
            Lq,
            Lk,
            D,
            ops.R,
            n_kblocks,
            cdiv(Lq, cfg.block_m),
            ops.scale,
            **ops.flags(cfg, "bwd", fused_ds and not ds_single_writer),
            ROW_FACTOR_GRAD=row_factor_grad,
            FUSE_DS=fused_ds,
            DS_FULL=ds_full,
            DS_STORE=ds_single_writer,
            STAGGER_KB=tiles.DQ_STAGGER,
            TMA_DQ=dq_desc is not None,
            TMA_DS=ds_desc is not None,
            ROWS=rows,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )

    _launch("bwd", ops, q.dtype, launch_bwd)
    dq = dq_acc.to(q.dtype)
    dqf = dqf_acc.to(q.dtype) if dqf_acc is not None else None
    if sum_ds and not fused_ds:
        assert g is not None  # allocated whenever sum_ds
        GB, GH = g.shape[0], g.shape[1]

        def launch_ds_sum(rcfg):
            splits = min(rcfg.splits, B) if GB == 1 else 1  # rows are split only where summed
            if splits > 1:
                g.zero_()  # partial sums are added atomically
            n_qblocks, n_kblocks = cdiv(Lq, rcfg.block_m), cdiv(Lk, rcfg.block_n)
            _ds_sum_kernel[(n_qblocks * n_kblocks * GB * GH * splits,)](
                q,
                k,
                v,
                qf,
                kf,
                bias,
                mask,
                do,
                row_stats[0],
                row_stats[1],
                delta,
                g,
                *q.stride(),
                *k.stride(),
                *v.stride(),
                *ops.stride_args(),
                *do.stride(),
                *g.stride(),
                B,
                H,
                Lq,
                Lk,
                D,
                ops.R,
                n_qblocks,
                n_kblocks,
                GB,
                GH,
                ops.scale,
                **ops.flags(rcfg, "ds_sum"),
                ROW_FACTORS=ops.has_factors and not shared_factors,
                SPLITS=splits,
                BLOCK_M=rcfg.block_m,
                BLOCK_N=rcfg.block_n,
                num_warps=rcfg.num_warps,
                num_stages=rcfg.num_stages,
            )

        _launch("ds_sum", ops, q.dtype, launch_ds_sum)

    dbias = None
    if bias_grad:
        assert g is not None  # sum_ds holds whenever the bias needs a gradient
        dbias = g
        if ops.bias_shape[1] == 1 and dbias.shape[1] != 1:
            dbias = dbias.sum(1, keepdim=True)
        for dim in (2, 3):
            if ops.bias_shape[dim] == 1:
                dbias = dbias.sum(dim, keepdim=True)
        dbias = dbias.to(ops.bias_dtype)
    if shared_factor_grad:
        assert g is not None  # sum_ds holds whenever shared factors need gradients
        g_h = g.sum(0) if g.shape[0] != 1 else g[0]  # [H, Lq, Lk]
        dqf = torch.matmul(g_h, ops.kf[0].float()).unsqueeze(0).to(q.dtype)
        dkf = torch.matmul(g_h.transpose(-1, -2), ops.qf[0].float()).unsqueeze(0).to(q.dtype)
    return dq, dk, dv, dqf, dkf, dbias


class _FlashBiasFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_factors, k_factors, bias, key_mask, scale):
        ops = _Operands(q, k, v, q_factors, k_factors, bias, key_mask, scale)
        o, row_stats = _forward(q, k, v, ops)
        ctx.ops = ops
        ctx.save_for_backward(q, k, v, o, row_stats)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, row_stats = ctx.saved_tensors
        dq, dk, dv, dqf, dkf, dbias = _backward(q, k, v, o, row_stats, do, ctx.ops, ctx.needs_input_grad)
        needs = ctx.needs_input_grad
        return (
            dq if needs[0] else None,
            dk if needs[1] else None,
            dv if needs[2] else None,
            dqf if needs[3] else None,
            dkf if needs[4] else None,
            dbias if needs[5] else None,
            None,
            None,
        )


def attention_triton(
    q, k, v, q_factors, k_factors, bias, key_mask, scale: float, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton path. Inputs are validated by ``flash_bias_attention``.

    With ``gate`` and no gradient to compute (inference), sigmoid(gate) is applied in the
    forward kernel's epilogue; otherwise the caller gates the differentiable output."""
    operands = (q, k, v, q_factors, k_factors, bias, gate)
    # fp32: not fused. A [64, 64] fp32 gate tile per row in the epilogue made the diffusion
    # transformer's op (D = 48, 5 samples, N = 1170) take 2.7-48 ms instead of ~0.5 (register
    # spills; H200, benchmarks/session3/run3/dsweep.txt)
    if (
        gate is not None
        and q.dtype != torch.float32
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands))
    ):
        o, _ = _forward(q, k, v, _Operands(q, k, v, q_factors, k_factors, bias, key_mask, scale), gate)
        return o
    o = _FlashBiasFunction.apply(q, k, v, q_factors, k_factors, bias, key_mask, scale)
    return o if gate is None else torch.sigmoid(gate) * o
