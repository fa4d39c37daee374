"""Triton FlashBias kernels: FlashAttention-2 forward and backward with a low-rank bias (factors
folded into the score tile by a second tensor-core product), a dense additive bias and a key mask.

Derivation (FlashAttention-2, Dao 2023), per (batch b, head h), in the log2 domain::

    S   = scale Q K^T + Qf Kf^T + Bias + MASK_NEG * (mask - 1)
    O   = softmax(S) V              tile by tile with the online softmax (m, l), exp(x) as
                                    exp2(x log2(e))
    m, 1/l                          saved per row for the backward pass

    P   = exp(S - m) / l            recomputed per tile in the backward kernel
    dV  = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O))
    dQ  = scale dS K,  dK = scale dS^T Q,  dQf = dS Kf,  dKf = dS^T Qf,  dBias = dS

Broadcast operands (factors shared by every row, a bias of shape [1, H, Lq, Lk]) are read with
stride 0, and a program serves two rows at once so each shared bias / factor tile is read (and
the factor product computed) once for both. The backward pass is one kernel per key block that
computes S, P, dP, dS once per tile: dK, dV accumulate in registers, dQ is added atomically into
an fp32 buffer (FlashAttention-2's scheme), and the gradients of shared operands come from dS
summed over the rows into one fp32 buffer of the *reduced* (bias) shape, so no per-row
[B, H, Lq, Lk] tensor is ever allocated. By default (rows sharing the bias / factors) the
backward kernel does that sum itself: a program serves two rows and adds their summed dS
atomically (``fuse_ds``: 12.13 ms fwd+bwd at N = 1024 on an H200); otherwise a separate kernel
owns each tile and loops over the rows, recomputing P and dP (12.45 ms; one atomic add per row
and score took 14.3).

Inputs reach this module validated and normalised by ``op.flash_bias_attention``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .op import pow2_at_least_16
from .reference import MASK_NEG

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    rows: int = 2  # fwd / bwd: rows per program where they share the bias / factor tiles (else 1)
    splits: int = 1  # ds_sum: programs per tile of a row-shared sum, each adding its share of the rows
    fuse_ds: bool = False  # bwd: add the program's rows' dS atomically to the row-shared sum (no ds_sum kernel)


# the padded tile width of a head dim or rank (shared with the op's dispatch)
_pow2_at_least_16 = pow2_at_least_16


def default_config(kind: str, block_d: int, block_r: int, has_bias: bool, elem_bytes: int = 2) -> KernelConfig:
    """Tiles per kernel kind ("fwd", "bwd", "ds_sum"), padded head width, padded rank (0 without
    factors), whether a dense bias tile is read, and the operands' element size (2: fp16 / bf16,
    4: fp32).

    Every entry fits the 227 KiB of shared memory of a Hopper SM as it is, so a first call
    compiles each kernel once: a launch that runs out of shared memory recompiles with smaller
    tiles (``_shrink``), and each such compile of a spilling fp32 kernel took 5-150 s
    (benchmarks/session5/cpu_compile_probe/). ``tests/test_kernel_compile.py`` compiles the
    largest case of each branch for sm_90 and checks this without a GPU."""
    if INTERPRET:  # the CPU interpreter: small tiles keep tests fast and still cover several blocks
        return KernelConfig(16, 16, 1, 1)
    width = block_d + block_r
    if elem_bytes == 4:
        # fp32 tiles take twice the bytes (shared memory, registers) of 16-bit ones: one row per
        # program, two stages, narrower tiles as the head dim + rank grows. The forward at
        # width <= 64 is the tiles Protenix's fp32 diffusion attention (D = 48, dense bias) ran
        # with after shrinking at launch (benchmarks/session3/run3). The backward adds each
        # row's dS to the row-shared sum itself (no separate ds_sum kernel to compile).
        if kind == "fwd":
            return KernelConfig(64, 64, 4, 2, 1) if width <= 64 else KernelConfig(32, 32, 4, 2, 1)
        if kind == "bwd":
            return KernelConfig(32, 32, 4, 2, 1, fuse_ds=True)
        return KernelConfig(32, 32, 4, 2, 1)
    if width > 128:  # wide tiles: keep shared memory under the 227 KiB of a Hopper SM
        return KernelConfig(64, 32, 4, 2, 1) if kind == "fwd" else KernelConfig(32, 64, 4, 2, 1, fuse_ds=True)
    # measured best at N = 1024, D = 32 on an H200 (benchmarks/kernel_tuning.md)
    if kind == "ds_sum":
        # a dense bias: 4 programs per tile (N = 1024: 4096 programs, not 1024) measured 12.46 against
        # 12.9 ms forward+backward; the shared factors alone gain nothing from splitting
        return KernelConfig(128, 64, 4, 3, 1) if (block_r and not has_bias) else KernelConfig(64, 64, 4, 3, 1, 4)
    if kind == "bwd":
        if has_bias or block_r:
            # two rows per program, their dS summed into the row-shared sum by atomic adds: dense
            # bias 12.13 / factors R = 32 11.85 ms fwd+bwd at N = 1024 against 12.45 / 12.52 with
            # the separate _ds_sum_kernel (H200, benchmarks/session3/run1/bwd.txt). From width 128
            # (D = 128, or D + R past 64) two rows' tiles need more than 227 KiB: one row.
            # A padded rank above the padded head dim (e.g. D 27 / R 38, D 8 / R 20) at 4 warps made
            # Triton 3.6 read shared memory out of bounds at the dQ product (compute-sanitizer; wrong
            # dQ, dK, dV): 8 warps compute those right (benchmarks/session5/call5/tiles.txt).
            warps = 8 if block_r > block_d else 4
            return KernelConfig(64, 64, warps, 3, 2 if width < 128 else 1, fuse_ds=True)
        return KernelConfig(64, 128, 4, 3, 1)
    # a shared bias or shared factors: two rows per program share their tiles. Factors at N = 1170
    # (triangle module case: strided q/k/v, key mask, gate): 4.98 ms against 6.01 with the
    # (128, 64, 4, 3, 1) tiles chosen at N = 1024 (benchmarks/session3/run2/tri.txt)
    # Head dims 33-64 (the diffusion transformer's 48): one row per program; 0.142 against 0.26 ms
    # with two (bf16, 5 samples, N = 1170, gate fused; benchmarks/session3/run3/dsweep.txt).
    if has_bias or block_r:
        return KernelConfig(64, 64, 4, 3, 2) if block_d <= 32 else KernelConfig(64, 64, 4, 3, 1)
    return KernelConfig(128, 64, 4, 3, 1)


# Tuning sweeps and benchmarks set entries here:
# {(kind, block_d, block_r, has_bias, elem_bytes): KernelConfig}.
CONFIG_OVERRIDES: dict[tuple[str, int, int, bool, int], KernelConfig] = {}


def config_key(kind: str, block_d: int, block_r: int, has_bias: bool,
               elem_bytes: int = 2) -> tuple[str, int, int, bool, int]:
    return (kind, block_d, block_r, bool(has_bias), int(elem_bytes))


def _ops_config_key(kind: str, ops: "_Operands") -> tuple[str, int, int, bool, int]:
    return config_key(kind, ops.block_d, ops.block_r if ops.has_factors else 0, ops.bias is not None,
                      ops.elem_bytes)


def _config(kind: str, ops: "_Operands") -> KernelConfig:
    key = _ops_config_key(kind, ops)
    return CONFIG_OVERRIDES.get(key) or default_config(*key)


def load_config_overrides(path: str) -> int:
    """Read tuned tiles from a JSON list of {"kind", "block_d", "block_r", "has_bias",
    "block_m", "block_n", "num_warps", "num_stages", "rows", "elem_bytes"} (as written by
    scripts/tune_kernels.py; elem_bytes defaults to 2, the 16-bit dtypes)."""
    import json

    entries = json.load(open(path))
    for e in entries:
        key = config_key(e["kind"], e["block_d"], e["block_r"], e["has_bias"], e.get("elem_bytes", 2))
        CONFIG_OVERRIDES[key] = KernelConfig(
            e["block_m"], e["block_n"], e["num_warps"], e["num_stages"], e.get("rows", 2), e.get("splits", 1),
            e.get("fuse_ds", False))
    return len(entries)


def _shrink(cfg: KernelConfig) -> KernelConfig | None:
    """The next smaller tiles after a launch ran out of shared memory (wide head dims in fp32
    need four times the bf16 tiles): one row per program, then fewer pipeline stages, then half
    the key block, then half the query block. None when nothing is left to shrink."""
    if cfg.rows > 1:
        return dataclasses.replace(cfg, rows=1)
    if cfg.num_stages > 1:
        return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
    if cfg.block_n > 16:
        return dataclasses.replace(cfg, block_n=cfg.block_n // 2)
    if cfg.block_m > 16:
        return dataclasses.replace(cfg, block_m=cfg.block_m // 2)
    return None


# (kind, block_d, block_r, has_bias, dtype) -> the tiles that fit after a launch had to shrink
_FITTED: dict[tuple, KernelConfig] = {}


def _launch(kind: str, ops: "_Operands", dtype: torch.dtype, launch) -> None:
    """``launch(cfg)`` with the configured tiles, shrunk (see ``_shrink``) while Triton reports
    that they need more shared memory than the device has; the tiles that fit are remembered.
    The error is raised at launch, before the kernel runs, so a retry starts from clean buffers."""
    key = (*_ops_config_key(kind, ops), dtype)
    cfg = _FITTED.get(key) or _config(kind, ops)
    while True:
        try:
            return launch(cfg)
        except OutOfResources:
            smaller = _shrink(cfg)
            if smaller is None:
                raise
            if key not in _FITTED:  # once per kernel class: each retry is another compile
                warnings.warn(f"FlashBias {kind} tiles {cfg} need more shared memory than this GPU has; "
                              f"compiling smaller ones (a slower first call)", RuntimeWarning, stacklevel=3)
            cfg = _FITTED[key] = smaller


# --------------------------------------------------------------------------------------------
# Tile helpers
# --------------------------------------------------------------------------------------------
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _load_tile(base, offs_r, offs_c, s_r, s_c, n_r, n_c, FULL_R: tl.constexpr, FULL_C: tl.constexpr):
    """A [len(offs_r), len(offs_c)] tile, zero outside [n_r, n_c]; FULL_R / FULL_C say a dim
    needs no bounds check (its extent is a multiple of the block), so the load is unmasked."""
    ptrs = base + offs_r[:, None] * s_r + offs_c[None, :] * s_c
    if FULL_R and FULL_C:
        return tl.load(ptrs)
    elif FULL_R:
        return tl.load(ptrs, mask=(offs_c < n_c)[None, :], other=0.0)
    elif FULL_C:
        return tl.load(ptrs, mask=(offs_r < n_r)[:, None], other=0.0)
    else:
        return tl.load(ptrs, mask=(offs_r < n_r)[:, None] & (offs_c < n_c)[None, :], other=0.0)


@triton.jit
def _shared_scores(qf, kf, bias_base, s_bq, s_bk, offs_m, offs_n, Lq, Lk,
                   HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                   EVEN_M: tl.constexpr, EVEN_N: tl.constexpr):
    """The score terms every row of a group shares: Qf Kf^T + Bias."""
    if HAS_FACTORS:
        t = tl.dot(qf, tl.trans(kf), input_precision=PRECISION)
        if HAS_BIAS:
            t += _load_tile(bias_base, offs_m, offs_n, s_bq, s_bk, Lq, Lk, EVEN_M, EVEN_N).to(tl.float32)
    else:
        t = _load_tile(bias_base, offs_m, offs_n, s_bq, s_bk, Lq, Lk, EVEN_M, EVEN_N).to(tl.float32)
    return t


@triton.jit
def _row_scores(q, k, shared, scale, mask_base, s_ml, offs_n, Lk,
                HAS_SHARED: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_N: tl.constexpr,
                PRECISION: tl.constexpr):
    """S = scale Q K^T + shared + key-mask term of one row (one FMA per score with a shared
    term); keys past Lk get -inf.

    HAS_MASK: 0 no key mask; else the row's additive key mask (fp32: 0 kept, -1e9 masked, -inf
    past Lk; see ``_additive_key_mask``), 1 when its padding covers every key tile (the load is
    unmasked, and its -inf padding excludes the keys past Lk), 2 when loaded with a bounds check."""
    # Added after the product rather than seeding its accumulator: a seeded product waits for
    # the bias tile, and measured 6% (forward) to 25% (backward) slower on an H200. Scaling q
    # instead of the scores cost a register-to-shared-memory copy of every q tile backward.
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if HAS_SHARED:
        s = s * scale + shared
    else:
        s = s * scale
    if HAS_MASK == 1:
        s += tl.load(mask_base + offs_n * s_ml)[None, :]
    elif HAS_MASK == 2:
        s += tl.load(mask_base + offs_n * s_ml, mask=offs_n < Lk, other=float("-inf"))[None, :]
    elif not EVEN_N:
        s = tl.where((offs_n < Lk)[None, :], s, float("-inf"))
    return s


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One online-softmax update of (m, l, acc) with a score tile and its value tile.

    exp(S - m) is exp2((S - m) log2(e)): subtracting first keeps the argument <= 0 even where
    S ~ -1e9 (fully masked rows), so P <= 1 fits fp16; a fused S log2(e) - m log2(e) would not."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2((s - m_new[:, None]) * _LOG2E)
    alpha = tl.math.exp2((m_i - m_new) * _LOG2E)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _fwd_epilogue(o_base, s_ol, s_od, row_max_ptr, row_inv_sum_ptr, acc, m_i, l_i,
                  offs_m, offs_d, Lq, D, ok, gate_base, s_gl, s_gd, HAS_GATE: tl.constexpr,
                  EVEN_D: tl.constexpr):
    # m and 1/l are kept apart rather than as m + log2(l): with a fully masked row m is about
    # -1.4e9, where fp32 cannot resolve log2(l) and P would be recomputed as 1 instead of 1/Lk.
    m_ok = (offs_m < Lq) & ok
    if EVEN_D:  # a mask along the contiguous head dim would keep the gate load / store scalar
        io_mask = m_ok[:, None]
    else:
        io_mask = m_ok[:, None] & (offs_d < D)[None, :]
    out = acc / l_i[:, None]
    if HAS_GATE:  # inference only: the output gate of the AF3 attentions, sigmoid(g) * o
        g = tl.load(gate_base + offs_m[:, None] * s_gl + offs_d[None, :] * s_gd, mask=io_mask, other=0.0)
        out = out * tl.sigmoid(g.to(tl.float32))
    tl.store(o_base + offs_m[:, None] * s_ol + offs_d[None, :] * s_od, out.to(o_base.dtype.element_ty), mask=io_mask)
    tl.store(row_max_ptr + offs_m, m_i, mask=m_ok)
    tl.store(row_inv_sum_ptr + offs_m, 1.0 / l_i, mask=m_ok)


@triton.jit
def _program_rows(pid, n_blocks, B, H, ROWS: tl.constexpr, GRID_ORDER: tl.constexpr):
    """Decode a program id into (block, head, first row, second row, second row exists).
    With ROWS == 2 a program serves rows b0 and b0 + 1, which share the bias / factor tiles;
    when B is odd the last group's second row is a clamped copy that writes nothing.
    GRID_ORDER (see ``_grid_order``), which neighbouring programs take: 1 the heads of one block
    (the heads of a token are neighbours in a fused projection, so they share cache lines);
    2 the row groups of one (block, head) (a few samples that share one bias tile read it
    while it is in L2); 0 the blocks of one head."""
    if GRID_ORDER == 1:
        h = (pid % H).to(tl.int64)
        rest = pid // H
        blk = rest % n_blocks
        b0 = ((rest // n_blocks) * ROWS).to(tl.int64)
    elif GRID_ORDER == 2:
        n_groups = tl.cdiv(B, ROWS)
        b0 = ((pid % n_groups) * ROWS).to(tl.int64)
        rest = pid // n_groups
        h = (rest % H).to(tl.int64)
        blk = rest // H
    else:
        blk = pid % n_blocks
        rest = pid // n_blocks
        h = (rest % H).to(tl.int64)
        b0 = ((rest // H) * ROWS).to(tl.int64)
    b1 = tl.minimum(b0 + 1, B - 1)
    return blk, h, b0, b1, (b0 + 1) < B


@triton.jit
def _fwd_kernel(
    Q, K, V, QF, KF, BIAS, MASK, O, ROW_MAX, ROW_INV_SUM, GATE,
    s_qb, s_qh, s_ql, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_qfb, s_qfh, s_qfl, s_qfr,
    s_kfb, s_kfh, s_kfl, s_kfr,
    s_bb, s_bh, s_bq, s_bk,
    s_mb, s_ml,
    s_ob, s_oh, s_ol, s_od,
    s_gb, s_gh, s_gl, s_gd,
    B, H, Lq, Lk, D, R, n_qblocks, scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GATE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_R: tl.constexpr,
    BIAS_FULL_M: tl.constexpr, BIAS_FULL_N: tl.constexpr, GRID_ORDER: tl.constexpr,
    PRECISION: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    HAS_SHARED: tl.constexpr = HAS_FACTORS or HAS_BIAS
    qb, h, b0, b1, row1_ok = _program_rows(tl.program_id(0), n_qblocks, B, H, ROWS, GRID_ORDER)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)

    # shared operands (factors, bias) are read through row b0: with ROWS == 2 they are shared
    qf = 0.0
    if HAS_FACTORS:
        qf = _load_tile(QF + b0 * s_qfb + h * s_qfh, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
    kf_base = KF + b0 * s_kfb + h * s_kfh
    bias_base = BIAS + b0 * s_bb + h * s_bh

    q0 = _load_tile(Q + b0 * s_qb + h * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
    k0_base = K + b0 * s_kb + h * s_kh
    v0_base = V + b0 * s_vb + h * s_vh
    m0 = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l0 = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if ROWS == 2:
        q1 = _load_tile(Q + b1 * s_qb + h * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
        k1_base = K + b1 * s_kb + h * s_kh
        v1_base = V + b1 * s_vb + h * s_vh
        m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l1 = tl.zeros([BLOCK_M], tl.float32)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + offs_n0
        shared = 0.0
        if HAS_SHARED:
            kf = 0.0
            if HAS_FACTORS:
                kf = _load_tile(kf_base, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
            shared = _shared_scores(qf, kf, bias_base, s_bq, s_bk, offs_m, offs_n, Lq, Lk,
                                    HAS_FACTORS, HAS_BIAS, PRECISION, BIAS_FULL_M, BIAS_FULL_N)
        k = _load_tile(k0_base, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
        v = _load_tile(v0_base, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
        s = _row_scores(q0, k, shared, scale, MASK + b0 * s_mb, s_ml, offs_n, Lk,
                        HAS_SHARED, HAS_MASK, EVEN_N, PRECISION)
        m0, l0, acc0 = _softmax_step(s, v, m0, l0, acc0, PRECISION)
        if ROWS == 2:
            k = _load_tile(k1_base, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
            v = _load_tile(v1_base, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
            s = _row_scores(q1, k, shared, scale, MASK + b1 * s_mb, s_ml, offs_n, Lk,
                            HAS_SHARED, HAS_MASK, EVEN_N, PRECISION)
            m1, l1, acc1 = _softmax_step(s, v, m1, l1, acc1, PRECISION)

    row0 = (b0 * H + h) * Lq
    _fwd_epilogue(O + b0 * s_ob + h * s_oh, s_ol, s_od, ROW_MAX + row0, ROW_INV_SUM + row0,
                  acc0, m0, l0, offs_m, offs_d, Lq, D, True, GATE + b0 * s_gb + h * s_gh, s_gl, s_gd, HAS_GATE,
                  EVEN_D)
    if ROWS == 2:
        row1 = (b1 * H + h) * Lq
        _fwd_epilogue(O + b1 * s_ob + h * s_oh, s_ol, s_od, ROW_MAX + row1, ROW_INV_SUM + row1,
                      acc1, m1, l1, offs_m, offs_d, Lq, D, row1_ok, GATE + b1 * s_gb + h * s_gh, s_gl, s_gd,
                      HAS_GATE, EVEN_D)


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA,
    s_ob, s_oh, s_ol, s_od, s_dob, s_doh, s_dol, s_dod,
    H, Lq, D, n_qblocks,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):
    """delta = rowsum(dO * O), per (b, h, query)."""
    pid = tl.program_id(0)
    qb = pid % n_qblocks
    bh = pid // n_qblocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + b * s_ob + h * s_oh, offs_m, offs_d, s_ol, s_od, Lq, D, EVEN_M, EVEN_D).to(tl.float32)
    do = _load_tile(DO + b * s_dob + h * s_doh, offs_m, offs_d, s_dol, s_dod, Lq, D, EVEN_M, EVEN_D).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, 1), mask=offs_m < Lq)


@triton.jit
def _bwd_row_step(q_base, s_ql, s_qd, do_base, s_dol, s_dod, stats_row, ROW_MAX, ROW_INV_SUM, DELTA,
                  k, v, shared, mask_base, s_ml, dq_base, s_dql, s_dqd, dk, dv,
                  offs_m, offs_n, offs_d, Lq, Lk, D, scale, row_ok,
                  HAS_SHARED: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_N: tl.constexpr,
                  PRECISION: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr):
    """One (query block, key block) tile of one row: updates dK, dV, adds dQ atomically and
    returns dS (fp32)."""
    m_ok = offs_m < Lq
    q = _load_tile(q_base, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
    do = _load_tile(do_base, offs_m, offs_d, s_dol, s_dod, Lq, D, EVEN_M, EVEN_D)
    # rows past the end get m = +inf, hence P = 0
    m_row = tl.load(ROW_MAX + stats_row + offs_m, mask=m_ok, other=float("inf"))
    inv_l = tl.load(ROW_INV_SUM + stats_row + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + stats_row + offs_m, mask=m_ok, other=0.0)
    s = _row_scores(q, k, shared, scale, mask_base, s_ml, offs_n, Lk, HAS_SHARED, HAS_MASK, EVEN_N, PRECISION)
    p = tl.math.exp2((s - m_row[:, None]) * _LOG2E) * inv_l[:, None]
    dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    ds_lp = ds.to(q.dtype)
    dk += tl.dot(tl.trans(ds_lp), q, input_precision=PRECISION)
    tl.atomic_add(dq_base + offs_m[:, None] * s_dql + offs_d[None, :] * s_dqd,
                  tl.dot(ds_lp, k, input_precision=PRECISION) * scale,
                  mask=(m_ok[:, None] & (offs_d < D)[None, :]) & row_ok, sem="relaxed")
    return dk, dv, ds


@triton.jit
def _bwd_kernel(
    Q, K, V, QF, KF, BIAS, MASK, DO, ROW_MAX, ROW_INV_SUM, DELTA,
    DK, DV, DQ_ACC, DKF, DQF_ACC, DS_SUM,
    s_qb, s_qh, s_ql, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_qfb, s_qfh, s_qfl, s_qfr,
    s_kfb, s_kfh, s_kfl, s_kfr,
    s_bb, s_bh, s_bq, s_bk,
    s_mb, s_ml,
    s_dob, s_doh, s_dol, s_dod,
    s_dkb, s_dkh, s_dkl, s_dkd,
    s_dvb, s_dvh, s_dvl, s_dvd,
    s_dqb, s_dqh, s_dql, s_dqd,
    s_dkfb, s_dkfh, s_dkfl, s_dkfr,
    s_dqfb, s_dqfh, s_dqfl, s_dqfr,
    s_gh, s_gq, s_gk,
    B, H, Lq, Lk, D, R, n_kblocks, n_qblocks, scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ROW_FACTOR_GRAD: tl.constexpr, FUSE_DS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_R: tl.constexpr,
    BIAS_FULL_M: tl.constexpr, BIAS_FULL_N: tl.constexpr, GRID_ORDER: tl.constexpr,
    PRECISION: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One key block of one row group: S, P, dP and dS are computed once per tile; dK, dV (and
    per-row dKf) accumulate in registers, dQ (and per-row dQf) go to fp32 buffers by atomic adds
    (FlashAttention-2's scheme for dQ). ROW_FACTOR_GRAD implies ROWS == 1. FUSE_DS (rows share
    the bias / factors): the program's dS, summed over its rows, is added atomically into the
    zeroed fp32 buffer DS_SUM [1, GH, Lq, Lk] (s_gh = 0 when the heads are summed too) instead
    of a separate _ds_sum_kernel pass."""
    HAS_SHARED: tl.constexpr = HAS_FACTORS or HAS_BIAS
    kb, h, b0, b1, row1_ok = _program_rows(tl.program_id(0), n_kblocks, B, H, ROWS, GRID_ORDER)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)

    kf = 0.0
    if HAS_FACTORS:
        kf = _load_tile(KF + b0 * s_kfb + h * s_kfh, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
    qf_base = QF + b0 * s_qfb + h * s_qfh
    bias_base = BIAS + b0 * s_bb + h * s_bh

    k0 = _load_tile(K + b0 * s_kb + h * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
    v0 = _load_tile(V + b0 * s_vb + h * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
    dk0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dkf = tl.zeros([BLOCK_N, BLOCK_R], tl.float32)
    if ROWS == 2:
        k1 = _load_tile(K + b1 * s_kb + h * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
        v1 = _load_tile(V + b1 * s_vb + h * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
        dk1 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv1 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # row groups start at different query blocks: fewer collisions of their dQ atomic adds
    qb_first = (b0 // ROWS) % n_qblocks
    for i in range(0, n_qblocks):
        offs_m = ((qb_first + i) % n_qblocks) * BLOCK_M + offs_m0
        shared = 0.0
        if HAS_SHARED:
            qf = 0.0
            if HAS_FACTORS:
                qf = _load_tile(qf_base, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
            shared = _shared_scores(qf, kf, bias_base, s_bq, s_bk, offs_m, offs_n, Lq, Lk,
                                    HAS_FACTORS, HAS_BIAS, PRECISION, BIAS_FULL_M, BIAS_FULL_N)
        dk0, dv0, ds0 = _bwd_row_step(
            Q + b0 * s_qb + h * s_qh, s_ql, s_qd, DO + b0 * s_dob + h * s_doh, s_dol, s_dod,
            (b0 * H + h) * Lq, ROW_MAX, ROW_INV_SUM, DELTA, k0, v0, shared, MASK + b0 * s_mb, s_ml,
            DQ_ACC + b0 * s_dqb + h * s_dqh, s_dql, s_dqd, dk0, dv0,
            offs_m, offs_n, offs_d, Lq, Lk, D, scale, True, HAS_SHARED, HAS_MASK, EVEN_N, PRECISION, EVEN_M, EVEN_D)
        if ROW_FACTOR_GRAD:
            ds_lp = ds0.to(kf.dtype)
            dkf += tl.dot(tl.trans(ds_lp), qf, input_precision=PRECISION)
            tl.atomic_add(DQF_ACC + b0 * s_dqfb + h * s_dqfh + offs_m[:, None] * s_dqfl + offs_r[None, :] * s_dqfr,
                          tl.dot(ds_lp, kf, input_precision=PRECISION),
                          mask=(offs_m < Lq)[:, None] & (offs_r < R)[None, :], sem="relaxed")
        if ROWS == 2:
            dk1, dv1, ds1 = _bwd_row_step(
                Q + b1 * s_qb + h * s_qh, s_ql, s_qd, DO + b1 * s_dob + h * s_doh, s_dol, s_dod,
                (b1 * H + h) * Lq, ROW_MAX, ROW_INV_SUM, DELTA, k1, v1, shared, MASK + b1 * s_mb, s_ml,
                DQ_ACC + b1 * s_dqb + h * s_dqh, s_dql, s_dqd, dk1, dv1,
                offs_m, offs_n, offs_d, Lq, Lk, D, scale, row1_ok, HAS_SHARED, HAS_MASK, EVEN_N, PRECISION,
                EVEN_M, EVEN_D)
            if FUSE_DS:  # a clamped copy of the last row (odd B) adds nothing
                ds0 += ds1 * row1_ok.to(tl.float32)
        if FUSE_DS:
            tl.atomic_add(DS_SUM + h * s_gh + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk, ds0,
                          mask=(offs_m < Lq)[:, None] & (offs_n < Lk)[None, :], sem="relaxed")

    nd_ok = (offs_n < Lk)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + b0 * s_dkb + h * s_dkh + offs_n[:, None] * s_dkl + offs_d[None, :] * s_dkd,
             (dk0 * scale).to(DK.dtype.element_ty), mask=nd_ok)
    tl.store(DV + b0 * s_dvb + h * s_dvh + offs_n[:, None] * s_dvl + offs_d[None, :] * s_dvd,
             dv0.to(DV.dtype.element_ty), mask=nd_ok)
    if ROWS == 2:
        tl.store(DK + b1 * s_dkb + h * s_dkh + offs_n[:, None] * s_dkl + offs_d[None, :] * s_dkd,
                 (dk1 * scale).to(DK.dtype.element_ty), mask=nd_ok & row1_ok)
        tl.store(DV + b1 * s_dvb + h * s_dvh + offs_n[:, None] * s_dvl + offs_d[None, :] * s_dvd,
                 dv1.to(DV.dtype.element_ty), mask=nd_ok & row1_ok)
    if ROW_FACTOR_GRAD:
        tl.store(DKF + b0 * s_dkfb + h * s_dkfh + offs_n[:, None] * s_dkfl + offs_r[None, :] * s_dkfr,
                 dkf.to(DKF.dtype.element_ty), mask=(offs_n < Lk)[:, None] & (offs_r < R)[None, :])


@triton.jit
def _ds_sum_kernel(
    Q, K, V, QF, KF, BIAS, MASK, DO, ROW_MAX, ROW_INV_SUM, DELTA, DS_SUM,
    s_qb, s_qh, s_ql, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_qfb, s_qfh, s_qfl, s_qfr,
    s_kfb, s_kfh, s_kfl, s_kfr,
    s_bb, s_bh, s_bq, s_bk,
    s_mb, s_ml,
    s_dob, s_doh, s_dol, s_dod,
    s_gb, s_gh, s_gq, s_gk,
    B, H, Lq, Lk, D, R, n_qblocks, n_kblocks, GB, GH, scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ROW_FACTORS: tl.constexpr, PRECISION: tl.constexpr, SPLITS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_R: tl.constexpr,
    BIAS_FULL_M: tl.constexpr, BIAS_FULL_N: tl.constexpr, GRID_ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dS summed over the rows (and heads) that share one tile of a broadcast operand, for the
    bias / shared-factor gradients: one program owns one [BLOCK_M, BLOCK_N] tile of the reduced
    buffer [GB, GH, Lq, Lk] and loops over its member rows, recomputing S, P, dP per row (two
    small products, as in the forward pass), so the sum needs no atomics. With ROW_FACTORS
    (factors per row, bias shared) the factor product is computed per row inside the loop.
    With SPLITS > 1 (rows shared, GB == 1) SPLITS programs share a tile, each summing a
    contiguous share of the rows, and add their partial sums atomically into the zeroed buffer:
    more programs than tiles, so the last wave is not left to a few SMs."""
    HAS_SHARED: tl.constexpr = HAS_FACTORS or HAS_BIAS
    TILE_FACTORS: tl.constexpr = HAS_FACTORS and not ROW_FACTORS  # factors shared by the tile's rows
    pid = tl.program_id(0)
    split = pid % SPLITS  # the programs of one tile are neighbours: they share its bias tile in L2
    pid = pid // SPLITS
    qb = pid % n_qblocks
    rest = pid // n_qblocks
    kb = rest % n_kblocks
    rest = rest // n_kblocks
    gh = rest % GH
    gb = rest // GH
    # member rows / heads of this tile: all of a broadcast dim, else just the tile's own
    b_lo = tl.where(GB == 1, 0, gb)
    b_hi = tl.where(GB == 1, B, gb + 1)
    if SPLITS > 1:
        share = tl.cdiv(b_hi - b_lo, SPLITS)
        b_lo = b_lo + split * share
        b_hi = tl.minimum(b_hi, b_lo + share)
    h_lo = tl.where(GH == 1, 0, gh)
    h_hi = tl.where(GH == 1, H, gh + 1)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    m_ok = offs_m < Lq

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for h in range(h_lo, h_hi):
        h64 = tl.cast(h, tl.int64)
        tile_shared = 0.0
        if TILE_FACTORS or HAS_BIAS:  # read through row b_lo: shared by every member row
            qf = 0.0
            kf = 0.0
            if TILE_FACTORS:
                qf = _load_tile(QF + b_lo * s_qfb + h64 * s_qfh, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
                kf = _load_tile(KF + b_lo * s_kfb + h64 * s_kfh, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
            tile_shared = _shared_scores(qf, kf, BIAS + b_lo * s_bb + h64 * s_bh, s_bq, s_bk, offs_m,
                                         offs_n, Lq, Lk, TILE_FACTORS, HAS_BIAS, PRECISION, EVEN_M, EVEN_N)
        for b in range(b_lo, b_hi):
            b64 = tl.cast(b, tl.int64)
            shared = tile_shared
            if ROW_FACTORS:
                qf_row = _load_tile(QF + b64 * s_qfb + h64 * s_qfh, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
                kf_row = _load_tile(KF + b64 * s_kfb + h64 * s_kfh, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
                shared += tl.dot(qf_row, tl.trans(kf_row), input_precision=PRECISION)
            q = _load_tile(Q + b64 * s_qb + h64 * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
            do = _load_tile(DO + b64 * s_dob + h64 * s_doh, offs_m, offs_d, s_dol, s_dod, Lq, D, EVEN_M, EVEN_D)
            k = _load_tile(K + b64 * s_kb + h64 * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
            v = _load_tile(V + b64 * s_vb + h64 * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
            row = (b64 * H + h64) * Lq
            m_row = tl.load(ROW_MAX + row + offs_m, mask=m_ok, other=float("inf"))
            inv_l = tl.load(ROW_INV_SUM + row + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + row + offs_m, mask=m_ok, other=0.0)
            s = _row_scores(q, k, shared, scale, MASK + b64 * s_mb, s_ml, offs_n, Lk,
                            HAS_SHARED, HAS_MASK, EVEN_N, PRECISION)
            p = tl.math.exp2((s - m_row[:, None]) * _LOG2E) * inv_l[:, None]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            acc += p * (dp - delta[:, None])
    out_ptrs = (DS_SUM + tl.cast(gb, tl.int64) * s_gb + tl.cast(gh, tl.int64) * s_gh
                + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk)
    out_mask = m_ok[:, None] & (offs_n < Lk)[None, :]
    if SPLITS > 1:
        tl.atomic_add(out_ptrs, acc, mask=out_mask, sem="relaxed")
    else:
        tl.store(out_ptrs, acc, mask=out_mask)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------
def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own switch for fp32 matmuls: tf32 only where the user allowed it.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


def _new_like_layout(t: torch.Tensor, dtype: torch.dtype | None = None, zero: bool = False) -> torch.Tensor:
    """A new dense tensor of t's shape whose dims are laid out in memory in the order of t's
    strides. q / k / v usually are strided views of a fused projection ([B, L, H, D] or, for
    the triangle ending node, [L, B, H, D] in memory); outputs and gradients in their input's
    layout spare callers a transpose copy (torch.empty_like falls back to contiguous for such
    non-dense views)."""
    new = torch.zeros if zero else torch.empty
    # outermost first; ties (size-1 or broadcast dims) keep their logical order
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
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
    if n == 1 or (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
                  and all(st % align == 0 for st, size in zip(t.stride()[:-1], t.shape[:-1]) if size > 1)):
        return t
    buf = torch.empty((*t.shape[:-1], -(-n // align) * align), dtype=t.dtype, device=t.device)
    view = buf[..., :n]
    view.copy_(t)
    return view


# program order of the forward / backward grids (see _program_rows). Heads fastest measured
# 4.38 / 4.47 ms for the starting / ending triangle module at N = 1024 against 4.42 / 4.52 (H200,
# same run; the contiguous standalone op 2.68 against 2.64: both within ~1.5 % noise).
# PFB_GRID_HEAD_FASTEST=0|1 overrides it for measurements.
GRID_HEAD_FASTEST = os.environ.get("PFB_GRID_HEAD_FASTEST", "1") == "1"
# at most this many row groups sharing a bias / factor tile run side by side (GRID_ORDER 2): the
# diffusion transformer's samples; PFB_GRID_ORDER=0|1|2 forces an order for measurements
SIDE_BY_SIDE_GROUPS = 8
_FORCED_GRID_ORDER = os.environ.get("PFB_GRID_ORDER")


def _grid_order(ops: "_Operands", rows: int) -> int:
    if _FORCED_GRID_ORDER is not None:
        return int(_FORCED_GRID_ORDER)
    shared = ops.bias is not None and ops.bias_shape[0] == 1 or ops.has_factors and ops.q_factors_batch == 1
    if shared and 1 < triton.cdiv(ops.B, rows) <= SIDE_BY_SIDE_GROUPS:
        return 2
    return 1 if GRID_HEAD_FASTEST else 0

# a shared bias is copied into zero-padded storage whose dims are multiples of this (every tile
# config's block_m / block_n divides it), so that its tile loads need no bounds mask
BIAS_TILE_PAD = 128


# the zero-padded buffers made by pad_bias_to_tiles, by id (a view's ._base is its buffer)
_TILE_PADDED: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def _tile_extent(n: int) -> int:
    return -(-n // BIAS_TILE_PAD) * BIAS_TILE_PAD


def pad_bias_to_tiles(bias: torch.Tensor) -> torch.Tensor:
    """[..., Lq, Lk] -> the same values in zero-padded storage [..., Lq', Lk'] (multiples of
    BIAS_TILE_PAD), returned as a view of the first Lq x Lk. The kernels read such a bias tile
    by tile without bounds masks; a bias that lives across many calls (the diffusion module's,
    fixed for all steps) is padded once with this, and the op then uses it as it is.

    Why: a bounds mask along the key dim (contiguous in memory) makes Triton load the bias tile
    element by element: at N = 1170 (not a multiple of the block) the dense-bias forward took
    7.23 ms against 3.72 at N = 1152 (H200, benchmarks/attention_h200/n1152_n1170_before_padding/);
    padded: 5.09."""
    *lead, lq, lk = bias.shape
    buf = torch.zeros((*lead, _tile_extent(lq), _tile_extent(lk)), dtype=bias.dtype, device=bias.device)
    _TILE_PADDED[id(buf)] = buf
    view = buf[..., :lq, :lk]
    view.copy_(bias)
    return view


def _in_padded_storage(t: torch.Tensor) -> bool:
    """Whether t is a view into a pad_bias_to_tiles buffer whose whole tiles (rows and keys
    rounded up to BIAS_TILE_PAD) stay inside that buffer: its padding is finite, so the reads
    past Lq / Lk are harmless (those keys get -inf, those query rows are never written)."""
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
    buf = torch.full((rows, _tile_extent(lk)), float("-inf"), dtype=torch.float32,
                     device=key_mask.device)
    buf[:, :lk] = (~key_mask).to(torch.float32) * -MASK_NEG
    return buf


class _Operands:
    """Expanded (stride-0) views of the optional operands, and the launch constants."""

    def __init__(self, q, k, v, q_factors, k_factors, bias, key_mask, scale):
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        self.B, self.H, self.Lq, self.Lk, self.D = B, H, Lq, Lk, D
        # shared operands (one copy for every row) with 16-byte aligned rows; the mask is small
        if q_factors is not None and q_factors.shape[0] == 1:
            q_factors, k_factors = _row_aligned(q_factors), _row_aligned(k_factors)
        # a bias shared by several rows whose tile dims are not block multiples: padded, so its
        # tiles load unmasked (the copy is B times smaller than what the kernels read)
        self.bias_padded = (bias is not None and bias.shape[0] == 1 and B > 1 and bias.shape[2:] == (Lq, Lk)
                            and (Lq % BIAS_TILE_PAD != 0 or Lk % BIAS_TILE_PAD != 0))
        if self.bias_padded and not _in_padded_storage(bias):
            bias = pad_bias_to_tiles(bias)
        elif bias is not None and bias.shape[0] == 1:
            bias = _row_aligned(bias)
        if key_mask is not None:
            key_mask = _additive_key_mask(key_mask)
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

    def flags(self, cfg: KernelConfig):
        """Constexpr flags of a launch with tiles ``cfg``: features present, and which dims
        divide into whole blocks (their loads go unmasked)."""
        return dict(HAS_FACTORS=self.has_factors, HAS_BIAS=self.bias is not None,
                    HAS_MASK=0 if self.mask is None else (1 if self.mask.shape[1] % cfg.block_n == 0 else 2),
                    PRECISION=self.precision,
                    BLOCK_D=self.block_d, BLOCK_R=self.block_r,
                    EVEN_M=self.Lq % cfg.block_m == 0, EVEN_N=self.Lk % cfg.block_n == 0,
                    EVEN_D=self.D == self.block_d, EVEN_R=self.R == self.block_r,
                    BIAS_FULL_M=self.Lq % cfg.block_m == 0 or (self.bias_padded and BIAS_TILE_PAD % cfg.block_m == 0),
                    BIAS_FULL_N=self.Lk % cfg.block_n == 0 or (self.bias_padded and BIAS_TILE_PAD % cfg.block_n == 0),
                    GRID_ORDER=_grid_order(self, _rows_per_program(self, cfg)))


def _rows_per_program(ops: _Operands, cfg: KernelConfig) -> int:
    """Two rows per program where they share every bias / factor tile (read once for both)."""
    shared = (not ops.has_factors or ops.q_factors_batch == 1) and (ops.bias is None or ops.bias_shape[0] == 1)
    return 2 if (cfg.rows == 2 and ops.B > 1 and shared and (ops.has_factors or ops.bias is not None)) else 1


def _forward(q, k, v, ops: _Operands, gate: torch.Tensor | None = None):
    """o (gated by sigmoid(gate) when given, which only the inference path does) and the
    per-row softmax statistics (max, 1 / sum) for the backward."""
    B, H, Lq, Lk, D = ops.B, ops.H, ops.Lq, ops.Lk, ops.D
    o = _new_like_layout(gate if gate is not None else q)
    row_stats = torch.empty((2, B, H, Lq), device=q.device, dtype=torch.float32)
    qf, kf, bias, mask = ops.pointer_args(q)

    def launch(cfg):
        rows = _rows_per_program(ops, cfg)
        n_qblocks = triton.cdiv(Lq, cfg.block_m)
        _fwd_kernel[(n_qblocks * H * triton.cdiv(B, rows),)](
            q, k, v, qf, kf, bias, mask, o, row_stats[0], row_stats[1], _or(gate, q),
            *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *o.stride(), *_strides4(gate),
            B, H, Lq, Lk, D, ops.R, n_qblocks, ops.scale,
            **ops.flags(cfg), HAS_GATE=gate is not None, ROWS=rows, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    _launch("fwd", ops, q.dtype, launch)
    return o, row_stats


def _reduced_ds_buffer(ops: _Operands, bias_grad: bool, shared_factor_grad: bool, device):
    """fp32 buffer for dS summed over the broadcast dims that the needed gradients share."""
    B, H = ops.B, ops.H
    bias_b, bias_h = (ops.bias_shape[0], ops.bias_shape[1]) if bias_grad else (1, 1)
    keep_b = bias_grad and bias_b == B and B > 1
    keep_h = H > 1 and ((bias_grad and bias_h == H) or shared_factor_grad)
    # rows padded to 16 bytes (see _row_aligned): the kernel stores (or adds) whole tiles into it
    lk_padded = -(-ops.Lk // 4) * 4
    return torch.empty((B if keep_b else 1, H if keep_h else 1, ops.Lq, lk_padded), device=device,
                       dtype=torch.float32)[..., :ops.Lk]


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
    n_dblocks = triton.cdiv(Lq, dm)
    _bwd_delta_kernel[(n_dblocks * B * H,)](
        o, do, delta, *o.stride(), *do.stride(), H, Lq, D, n_dblocks,
        BLOCK_M=dm, BLOCK_D=ops.block_d, EVEN_M=Lq % dm == 0, EVEN_D=D == ops.block_d,
    )

    dk = _new_like_layout(k)
    dv = _new_like_layout(v)
    dq_acc = _new_like_layout(q, torch.float32, zero=True)  # atomic adds, cast at the end
    dkf = torch.empty((B, H, Lk, ops.R), device=q.device, dtype=q.dtype) if row_factor_grad else None
    dqf_acc = torch.zeros((B, H, Lq, ops.R), device=q.device, dtype=torch.float32) if row_factor_grad else None
    qf, kf, bias, mask = ops.pointer_args(q)

    # dS summed over the rows sharing the bias / factors: by the bwd kernel's atomics (fuse_ds)
    # or by the separate _ds_sum_kernel
    g = _reduced_ds_buffer(ops, bias_grad, shared_factor_grad, q.device) if sum_ds else None
    fused_ds = False

    def launch_bwd(cfg):
        nonlocal fused_ds
        rows = 1 if row_factor_grad else _rows_per_program(ops, cfg)
        fused_ds = bool(cfg.fuse_ds and sum_ds and g.shape[0] == 1 and not row_factor_grad)
        if fused_ds:
            g.zero_()
        gh_stride = g.stride(1) if (fused_ds and g.shape[1] > 1) else 0
        n_kblocks = triton.cdiv(Lk, cfg.block_n)
        _bwd_kernel[(n_kblocks * H * triton.cdiv(B, rows),)](
            q, k, v, qf, kf, bias, mask, do, row_stats[0], row_stats[1], delta,
            dk, dv, dq_acc, _or(dkf, dk), _or(dqf_acc, dq_acc), g if fused_ds else dq_acc,
            *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *do.stride(),
            *dk.stride(), *dv.stride(), *dq_acc.stride(), *_strides4(dkf), *_strides4(dqf_acc),
            gh_stride, *(g.stride()[2:] if fused_ds else (0, 0)),
            B, H, Lq, Lk, D, ops.R, n_kblocks, triton.cdiv(Lq, cfg.block_m), ops.scale,
            **ops.flags(cfg), ROW_FACTOR_GRAD=row_factor_grad, FUSE_DS=fused_ds, ROWS=rows,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    _launch("bwd", ops, q.dtype, launch_bwd)
    dq = dq_acc.to(q.dtype)
    dqf = dqf_acc.to(q.dtype) if dqf_acc is not None else None
    if sum_ds and not fused_ds:
        GB, GH = g.shape[0], g.shape[1]

        def launch_ds_sum(rcfg):
            splits = min(rcfg.splits, B) if GB == 1 else 1  # rows are split only where summed
            if splits > 1:
                g.zero_()  # partial sums are added atomically
            n_qblocks, n_kblocks = triton.cdiv(Lq, rcfg.block_m), triton.cdiv(Lk, rcfg.block_n)
            _ds_sum_kernel[(n_qblocks * n_kblocks * GB * GH * splits,)](
                q, k, v, qf, kf, bias, mask, do, row_stats[0], row_stats[1], delta, g,
                *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *do.stride(), *g.stride(),
                B, H, Lq, Lk, D, ops.R, n_qblocks, n_kblocks, GB, GH, ops.scale,
                **ops.flags(rcfg), ROW_FACTORS=ops.has_factors and not shared_factors, SPLITS=splits,
                BLOCK_M=rcfg.block_m, BLOCK_N=rcfg.block_n, num_warps=rcfg.num_warps, num_stages=rcfg.num_stages,
            )

        _launch("ds_sum", ops, q.dtype, launch_ds_sum)

    dbias = None
    if bias_grad:
        dbias = g
        if ops.bias_shape[1] == 1 and dbias.shape[1] != 1:
            dbias = dbias.sum(1, keepdim=True)
        for dim in (2, 3):
            if ops.bias_shape[dim] == 1:
                dbias = dbias.sum(dim, keepdim=True)
        dbias = dbias.to(ops.bias_dtype)
    if shared_factor_grad:
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
        return (dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None,
                dqf if needs[3] else None, dkf if needs[4] else None,
                dbias if needs[5] else None, None, None)


def attention_triton(q, k, v, q_factors, k_factors, bias, key_mask, scale: float,
                     gate: torch.Tensor | None = None) -> torch.Tensor:
    """Triton path. Inputs are validated by ``flash_bias_attention``.

    With ``gate`` and no gradient to compute (inference), sigmoid(gate) is applied in the
    forward kernel's epilogue; otherwise the caller gates the differentiable output."""
    operands = (q, k, v, q_factors, k_factors, bias, gate)
    # fp32: not fused. A [64, 64] fp32 gate tile per row in the epilogue made the diffusion
    # transformer's op (D = 48, 5 samples, N = 1170) take 2.7-48 ms instead of ~0.5 (register
    # spills; H200, benchmarks/session3/run3/dsweep.txt)
    if gate is not None and q.dtype != torch.float32 and not (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands)):
        o, _ = _forward(q, k, v, _Operands(q, k, v, q_factors, k_factors, bias, key_mask, scale), gate)
        return o
    o = _FlashBiasFunction.apply(q, k, v, q_factors, k_factors, bias, key_mask, scale)
    return o if gate is None else torch.sigmoid(gate) * o
