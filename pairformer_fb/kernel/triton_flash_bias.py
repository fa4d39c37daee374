"""Triton FlashBias kernels: FlashAttention-2 forward and backward with a low-rank bias (factors
folded into the score tile by a second tensor-core product), a dense additive bias and a key mask.

Derivation (FlashAttention-2, Dao 2023), per (batch b, head h), in the log2 domain::

    S   = log2(e) * (scale * Q K^T + Qf Kf^T + Bias + MASK_NEG * (mask - 1))
    O   = softmax(S) V              computed tile by tile with the online softmax (m, l)
    m, 1/l                          saved per row for the backward pass

    P   = exp2(S - m) / l           recomputed per tile in the backward kernels
    dV  = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O))
    dQ  = scale * dS K,  dK = scale * dS^T Q,  dQf = dS Kf,  dKf = dS^T Qf,  dBias = dS

Broadcast operands (factors shared by every row, a bias of shape [1, H, Lq, Lk]) are read with
stride 0. Their gradients need dS summed over the broadcast dimensions: the dQ kernel adds each
dS tile into one fp32 buffer of the *reduced* shape (atomic adds, start offsets rotated per
row to spread contention), so no per-row [B, H, Lq, Lk] tensor is ever allocated.

Inputs reach this module validated and normalised by ``op.flash_bias_attention``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import MASK_NEG

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _pow2_at_least_16(x: int) -> int:
    return max(16, triton.next_power_of_2(x))


def default_config(kind: str, block_d: int, block_r: int, has_bias: bool) -> KernelConfig:
    """Tiles per kernel kind ("fwd", "bwd_dkdv", "bwd_dq"), padded head width, padded rank
    (0 without factors) and whether a dense bias tile is read."""
    if INTERPRET:  # the CPU interpreter: small tiles keep tests fast and still cover several blocks
        return KernelConfig(16, 16, 1, 1)
    wide = block_d + block_r > 128
    if kind == "fwd":
        return KernelConfig(128, 32 if wide else 64, 8 if wide else 4, 2 if wide else 3)
    return KernelConfig(64, 64, 8 if wide else 4, 2)


# Backward strategy: "atomic_dq" computes S, P, dP once per tile in the dK/dV kernel and adds
# dQ atomically into an fp32 buffer (FlashAttention-2's own scheme); "two_pass" recomputes them
# in a separate dQ kernel that owns its rows (no dQ atomics).
BACKWARD = os.environ.get("PAIRFORMER_FB_BACKWARD", "atomic_dq")

# Tuning sweeps and benchmarks set entries here: {(kind, block_d, block_r, has_bias): KernelConfig}.
CONFIG_OVERRIDES: dict[tuple[str, int, int, bool], KernelConfig] = {}


def config_key(kind: str, block_d: int, block_r: int, has_bias: bool) -> tuple[str, int, int, bool]:
    return (kind, block_d, block_r, bool(has_bias))


def _config(kind: str, ops: "_Operands") -> KernelConfig:
    key = config_key(kind, ops.block_d, ops.block_r if ops.has_factors else 0, ops.bias is not None)
    return CONFIG_OVERRIDES.get(key) or default_config(*key)


def load_config_overrides(path: str) -> int:
    """Read tuned tiles from a JSON list of {"kind", "block_d", "block_r", "has_bias",
    "block_m", "block_n", "num_warps", "num_stages"} (as written by scripts/tune_kernels.py)."""
    import json

    entries = json.load(open(path))
    for e in entries:
        CONFIG_OVERRIDES[config_key(e["kind"], e["block_d"], e["block_r"], e["has_bias"])] = KernelConfig(
            e["block_m"], e["block_n"], e["num_warps"], e["num_stages"])
    return len(entries)


# --------------------------------------------------------------------------------------------
# Shared tile helper: the log2-domain score tile S[BLOCK_M, BLOCK_N] of one (b, h).
# --------------------------------------------------------------------------------------------
@triton.jit
def _score_tile(
    q, k, qf, kf,
    bias_ptr, s_bq, s_bk, mask_ptr, s_ml,
    offs_m, offs_n, Lq, Lk, qk_scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if HAS_FACTORS:
        s += tl.dot(qf, tl.trans(kf), input_precision=PRECISION) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(
            bias_ptr + offs_m[:, None] * s_bq + offs_n[None, :] * s_bk,
            mask=(offs_m[:, None] < Lq) & (offs_n[None, :] < Lk), other=0.0,
        )
        s += bias.to(tl.float32) * 1.4426950408889634
    if HAS_MASK:
        keep = tl.load(mask_ptr + offs_n * s_ml, mask=offs_n < Lk, other=1)
        # the hosts' 1e9 * (mask - 1), in the log2 domain
        s += tl.where(keep != 0, 0.0, -1.0e9 * 1.4426950408889634)[None, :]
    # keys past the end do not exist: exp2(-inf) = 0 exactly
    s = tl.where((offs_n < Lk)[None, :], s, float("-inf"))
    return s


@triton.jit
def _fwd_kernel(
    Q, K, V, QF, KF, BIAS, MASK, O, ROW_MAX, ROW_INV_SUM,
    s_qb, s_qh, s_ql, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_qfb, s_qfh, s_qfl, s_qfr,
    s_kfb, s_kfh, s_kfl, s_kfr,
    s_bb, s_bh, s_bq, s_bk,
    s_mb, s_ml,
    s_ob, s_oh, s_ol, s_od,
    H, Lq, Lk, D, R, n_qblocks, qk_scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    qb = pid % n_qblocks
    bh = pid // n_qblocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    m_ok = offs_m < Lq
    d_ok = offs_d < D

    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_ql + offs_d[None, :] * s_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    qf = q
    if HAS_FACTORS:
        qf = tl.load(QF + b * s_qfb + h * s_qfh + offs_m[:, None] * s_qfl + offs_r[None, :] * s_qfr,
                     mask=m_ok[:, None] & (offs_r < R)[None, :], other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    kf_base = KF + b * s_kfb + h * s_kfh
    bias_base = BIAS + b * s_bb + h * s_bh
    mask_base = MASK + b * s_mb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < Lk
        k = tl.load(k_base + offs_n[:, None] * s_kl + offs_d[None, :] * s_kd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vl + offs_d[None, :] * s_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        kf = k
        if HAS_FACTORS:
            kf = tl.load(kf_base + offs_n[:, None] * s_kfl + offs_r[None, :] * s_kfr,
                         mask=n_ok[:, None] & (offs_r < R)[None, :], other=0.0)
        s = _score_tile(q, k, qf, kf, bias_base, s_bq, s_bk, mask_base, s_ml, offs_m, offs_n,
                        Lq, Lk, qk_scale, HAS_FACTORS, HAS_BIAS, HAS_MASK, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :] * s_od,
             acc.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    # m and 1/l are kept apart rather than as m + log2(l): with a fully masked row m is about
    # -1.4e9, where fp32 cannot resolve log2(l) and P would be recomputed as 1 instead of 1/Lk.
    tl.store(ROW_MAX + bh.to(tl.int64) * Lq + offs_m, m_i, mask=m_ok)
    tl.store(ROW_INV_SUM + bh.to(tl.int64) * Lq + offs_m, 1.0 / l_i, mask=m_ok)


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA,
    s_ob, s_oh, s_ol, s_od, s_dob, s_doh, s_dol, s_dod,
    H, Lq, D, n_qblocks,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    qb = pid % n_qblocks
    bh = pid // n_qblocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < Lq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :] * s_od,
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dol + offs_d[None, :] * s_dod,
                 mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, 1), mask=offs_m < Lq)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, QF, KF, BIAS, MASK, DO, ROW_MAX, ROW_INV_SUM, DELTA, DK, DV, DKF,
    DQ_ACC, DQF_ACC, DS_SUM,
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
    s_dkfb, s_dkfh, s_dkfl, s_dkfr,
    s_dqb, s_dqh, s_dql, s_dqd,
    s_dqfb, s_dqfh, s_dqfl, s_dqfr,
    s_gb, s_gh, s_gq, s_gk,
    H, Lq, Lk, D, R, n_kblocks, n_qblocks, scale, qk_scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ROW_FACTOR_GRAD: tl.constexpr, ATOMIC_DQ: tl.constexpr, SUM_DS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dK, dV (and per-row dKf) of one key block; with ATOMIC_DQ also dQ (and per-row dQf)
    and the reduced dS, added atomically into fp32 buffers, so S, P and dP are computed once."""
    pid = tl.program_id(0)
    kb = pid % n_kblocks
    bh = pid // n_kblocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    n_ok = offs_n < Lk
    d_ok = offs_d < D
    r_ok = offs_r < R

    k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kl + offs_d[None, :] * s_kd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vl + offs_d[None, :] * s_vd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    kf = k
    if HAS_FACTORS:
        kf = tl.load(KF + b * s_kfb + h * s_kfh + offs_n[:, None] * s_kfl + offs_r[None, :] * s_kfr,
                     mask=n_ok[:, None] & r_ok[None, :], other=0.0)
    q_base = Q + b * s_qb + h * s_qh
    qf_base = QF + b * s_qfb + h * s_qfh
    do_base = DO + b * s_dob + h * s_doh
    bias_base = BIAS + b * s_bb + h * s_bh
    mask_base = MASK + b * s_mb
    row_base = bh.to(tl.int64) * Lq
    dq_base = DQ_ACC + b * s_dqb + h * s_dqh
    dqf_base = DQF_ACC + b * s_dqfb + h * s_dqfh
    g_base = DS_SUM + b * s_gb + h * s_gh

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dkf = tl.zeros([BLOCK_N, BLOCK_R], tl.float32)
    # rows that add into the same shared dS tiles start at different query blocks (fewer collisions)
    qb_first = (bh // H) % n_qblocks
    for i in range(0, n_qblocks):
        offs_m = ((qb_first + i) % n_qblocks) * BLOCK_M + offs_m0
        m_ok = offs_m < Lq
        q = tl.load(q_base + offs_m[:, None] * s_ql + offs_d[None, :] * s_qd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * s_dol + offs_d[None, :] * s_dod,
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        qf = q
        if HAS_FACTORS:
            qf = tl.load(qf_base + offs_m[:, None] * s_qfl + offs_r[None, :] * s_qfr,
                         mask=m_ok[:, None] & r_ok[None, :], other=0.0)
        # rows past the end get m = +inf, hence P = 0
        m_row = tl.load(ROW_MAX + row_base + offs_m, mask=m_ok, other=float("inf"))
        inv_l = tl.load(ROW_INV_SUM + row_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
        s = _score_tile(q, k, qf, kf, bias_base, s_bq, s_bk, mask_base, s_ml, offs_m, offs_n,
                        Lq, Lk, qk_scale, HAS_FACTORS, HAS_BIAS, HAS_MASK, PRECISION)
        p = tl.math.exp2(s - m_row[:, None]) * inv_l[:, None]
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds_f32 = p * (dp - delta[:, None])
        ds = ds_f32.to(q.dtype)
        dk += tl.dot(tl.trans(ds), q, input_precision=PRECISION)
        if ROW_FACTOR_GRAD:
            dkf += tl.dot(tl.trans(ds), qf, input_precision=PRECISION)
        if ATOMIC_DQ:
            md_ok = m_ok[:, None] & d_ok[None, :]
            tl.atomic_add(dq_base + offs_m[:, None] * s_dql + offs_d[None, :] * s_dqd,
                          tl.dot(ds, k, input_precision=PRECISION) * scale, mask=md_ok, sem="relaxed")
            if ROW_FACTOR_GRAD:
                tl.atomic_add(dqf_base + offs_m[:, None] * s_dqfl + offs_r[None, :] * s_dqfr,
                              tl.dot(ds, kf, input_precision=PRECISION),
                              mask=m_ok[:, None] & r_ok[None, :], sem="relaxed")
            if SUM_DS:
                tl.atomic_add(g_base + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk, ds_f32,
                              mask=m_ok[:, None] & n_ok[None, :], sem="relaxed")

    nd_ok = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + b * s_dkb + h * s_dkh + offs_n[:, None] * s_dkl + offs_d[None, :] * s_dkd,
             (dk * scale).to(DK.dtype.element_ty), mask=nd_ok)
    tl.store(DV + b * s_dvb + h * s_dvh + offs_n[:, None] * s_dvl + offs_d[None, :] * s_dvd,
             dv.to(DV.dtype.element_ty), mask=nd_ok)
    if ROW_FACTOR_GRAD:
        tl.store(DKF + b * s_dkfb + h * s_dkfh + offs_n[:, None] * s_dkfl + offs_r[None, :] * s_dkfr,
                 dkf.to(DKF.dtype.element_ty), mask=n_ok[:, None] & r_ok[None, :])


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, QF, KF, BIAS, MASK, DO, ROW_MAX, ROW_INV_SUM, DELTA, DQ, DQF, DS_SUM,
    s_qb, s_qh, s_ql, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_qfb, s_qfh, s_qfl, s_qfr,
    s_kfb, s_kfh, s_kfl, s_kfr,
    s_bb, s_bh, s_bq, s_bk,
    s_mb, s_ml,
    s_dob, s_doh, s_dol, s_dod,
    s_dqb, s_dqh, s_dql, s_dqd,
    s_dqfb, s_dqfh, s_dqfl, s_dqfr,
    s_gb, s_gh, s_gq, s_gk,
    H, Lq, Lk, D, R, n_qblocks, n_kblocks, scale, qk_scale,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ROW_FACTOR_GRAD: tl.constexpr, SUM_DS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    qb = pid % n_qblocks
    bh = pid // n_qblocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    m_ok = offs_m < Lq
    d_ok = offs_d < D
    r_ok = offs_r < R

    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_ql + offs_d[None, :] * s_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dol + offs_d[None, :] * s_dod,
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    qf = q
    if HAS_FACTORS:
        qf = tl.load(QF + b * s_qfb + h * s_qfh + offs_m[:, None] * s_qfl + offs_r[None, :] * s_qfr,
                     mask=m_ok[:, None] & r_ok[None, :], other=0.0)
    row_base = bh.to(tl.int64) * Lq
    m_row = tl.load(ROW_MAX + row_base + offs_m, mask=m_ok, other=float("inf"))
    inv_l = tl.load(ROW_INV_SUM + row_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    kf_base = KF + b * s_kfb + h * s_kfh
    bias_base = BIAS + b * s_bb + h * s_bh
    mask_base = MASK + b * s_mb
    g_base = DS_SUM + b * s_gb + h * s_gh

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dqf = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    # rows sharing one reduced dS tile start at different key blocks: fewer atomic collisions
    kb_first = (bh // H) % n_kblocks
    for i in range(0, n_kblocks):
        kb = (kb_first + i) % n_kblocks
        offs_n = kb * BLOCK_N + offs_n0
        n_ok = offs_n < Lk
        k = tl.load(k_base + offs_n[:, None] * s_kl + offs_d[None, :] * s_kd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vl + offs_d[None, :] * s_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        kf = k
        if HAS_FACTORS:
            kf = tl.load(kf_base + offs_n[:, None] * s_kfl + offs_r[None, :] * s_kfr,
                         mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        s = _score_tile(q, k, qf, kf, bias_base, s_bq, s_bk, mask_base, s_ml, offs_m, offs_n,
                        Lq, Lk, qk_scale, HAS_FACTORS, HAS_BIAS, HAS_MASK, PRECISION)
        p = tl.math.exp2(s - m_row[:, None]) * inv_l[:, None]
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if SUM_DS:
            tl.atomic_add(g_base + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk, ds,
                          mask=m_ok[:, None] & n_ok[None, :], sem="relaxed")
        ds_lp = ds.to(q.dtype)
        dq += tl.dot(ds_lp, k, input_precision=PRECISION)
        if ROW_FACTOR_GRAD:
            dqf += tl.dot(ds_lp, kf, input_precision=PRECISION)

    tl.store(DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dql + offs_d[None, :] * s_dqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    if ROW_FACTOR_GRAD:
        tl.store(DQF + b * s_dqfb + h * s_dqfh + offs_m[:, None] * s_dqfl + offs_r[None, :] * s_dqfr,
                 dqf.to(DQF.dtype.element_ty), mask=m_ok[:, None] & r_ok[None, :])


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


def _or(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument the kernel does not touch when its feature flag is off."""
    return t if t is not None else placeholder


class _Operands:
    """Expanded (stride-0) views of the optional operands, and the launch constants."""

    def __init__(self, q, k, v, q_factors, k_factors, bias, key_mask, scale):
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        self.B, self.H, self.Lq, self.Lk, self.D = B, H, Lq, Lk, D
        self.has_factors = q_factors is not None
        self.q_factors_batch = q_factors.shape[0] if self.has_factors else 0
        self.bias_shape = tuple(bias.shape) if bias is not None else None
        self.bias_dtype = bias.dtype if bias is not None else None
        self.R = q_factors.shape[-1] if self.has_factors else 0
        self.qf = q_factors.expand(B, H, Lq, self.R) if self.has_factors else None
        self.kf = k_factors.expand(B, H, Lk, self.R) if self.has_factors else None
        self.bias = bias.expand(B, H, Lq, Lk) if bias is not None else None
        # bool -> uint8 is a free reinterpretation (same storage)
        self.mask = key_mask.view(torch.uint8).expand(B, Lk) if key_mask is not None else None
        self.scale = float(scale)
        self.block_d = _pow2_at_least_16(D)
        self.block_r = _pow2_at_least_16(self.R) if self.has_factors else 16
        self.precision = _precision(q.dtype)

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

    def flags(self):
        return dict(HAS_FACTORS=self.has_factors, HAS_BIAS=self.bias is not None,
                    HAS_MASK=self.mask is not None, PRECISION=self.precision,
                    BLOCK_D=self.block_d, BLOCK_R=self.block_r)


def _forward(q, k, v, ops: _Operands):
    B, H, Lq, Lk, D = ops.B, ops.H, ops.Lq, ops.Lk, ops.D
    cfg = _config("fwd", ops)
    o = torch.empty_like(q)
    row_stats = torch.empty((2, B, H, Lq), device=q.device, dtype=torch.float32)
    n_qblocks = triton.cdiv(Lq, cfg.block_m)
    qf, kf, bias, mask = ops.pointer_args(q)
    _fwd_kernel[(n_qblocks * B * H,)](
        q, k, v, qf, kf, bias, mask, o, row_stats[0], row_stats[1],
        *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *o.stride(),
        H, Lq, Lk, D, ops.R, n_qblocks, ops.scale * LOG2E,
        **ops.flags(), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return o, row_stats


def _reduced_ds_buffer(ops: _Operands, bias_grad: bool, shared_factor_grad: bool, device):
    """fp32 buffer for dS summed over the broadcast dims that the needed gradients share."""
    B, H = ops.B, ops.H
    bias_b, bias_h = (ops.bias_shape[0], ops.bias_shape[1]) if bias_grad else (1, 1)
    keep_b = bias_grad and bias_b == B and B > 1
    keep_h = H > 1 and ((bias_grad and bias_h == H) or shared_factor_grad)
    g = torch.zeros((B if keep_b else 1, H if keep_h else 1, ops.Lq, ops.Lk),
                    device=device, dtype=torch.float32)
    strides = (g.stride(0) if keep_b else 0, g.stride(1) if keep_h else 0, g.stride(2), g.stride(3))
    return g, strides


def _backward(q, k, v, o, row_stats, do, ops: _Operands, needs: tuple[bool, ...]):
    B, H, Lq, Lk, D = ops.B, ops.H, ops.Lq, ops.Lk, ops.D
    need_factor_grad = ops.has_factors and (needs[3] or needs[4])
    shared_factors = ops.has_factors and ops.q_factors_batch == 1 and B > 1
    row_factor_grad = need_factor_grad and not shared_factors
    bias_grad = ops.bias is not None and needs[5]
    shared_factor_grad = need_factor_grad and shared_factors
    sum_ds = bias_grad or shared_factor_grad

    qf, kf, bias, mask = ops.pointer_args(q)
    flags = ops.flags()

    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    dm = 64 if not INTERPRET else 16
    n_dblocks = triton.cdiv(Lq, dm)
    _bwd_delta_kernel[(n_dblocks * B * H,)](
        o, do, delta, *o.stride(), *do.stride(), H, Lq, D, n_dblocks,
        BLOCK_M=dm, BLOCK_D=ops.block_d,
    )

    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dkf = torch.empty((B, H, Lk, ops.R), device=q.device, dtype=q.dtype) if row_factor_grad else None
    g, g_strides = (_reduced_ds_buffer(ops, bias_grad, shared_factor_grad, q.device)
                    if sum_ds else (None, (0, 0, 0, 0)))
    atomic_dq = BACKWARD == "atomic_dq"
    if atomic_dq:  # fp32 accumulators, cast once at the end
        dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        dqf_acc = torch.zeros((B, H, Lq, ops.R), device=q.device, dtype=torch.float32) if row_factor_grad else None
    else:
        dq_acc = dqf_acc = None
    cfg = _config("bwd_dkdv", ops)
    n_kblocks = triton.cdiv(Lk, cfg.block_n)
    _bwd_dkdv_kernel[(n_kblocks * B * H,)](
        q, k, v, qf, kf, bias, mask, do, row_stats[0], row_stats[1], delta, dk, dv,
        _or(dkf, dk), _or(dq_acc, delta), _or(dqf_acc, delta), _or(g, delta),
        *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *do.stride(),
        *dk.stride(), *dv.stride(), *_strides4(dkf), *_strides4(dq_acc), *_strides4(dqf_acc), *g_strides,
        H, Lq, Lk, D, ops.R, n_kblocks, triton.cdiv(Lq, cfg.block_m), ops.scale, ops.scale * LOG2E,
        **flags, ROW_FACTOR_GRAD=row_factor_grad, ATOMIC_DQ=atomic_dq, SUM_DS=sum_ds and atomic_dq,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    if atomic_dq:
        dq = dq_acc.to(q.dtype)
        dqf = dqf_acc.to(q.dtype) if dqf_acc is not None else None
    else:
        dq = torch.empty_like(q)
        dqf = torch.empty((B, H, Lq, ops.R), device=q.device, dtype=q.dtype) if row_factor_grad else None
        cfg = _config("bwd_dq", ops)
        n_qblocks = triton.cdiv(Lq, cfg.block_m)
        n_kblocks = triton.cdiv(Lk, cfg.block_n)
        _bwd_dq_kernel[(n_qblocks * B * H,)](
            q, k, v, qf, kf, bias, mask, do, row_stats[0], row_stats[1], delta, dq,
            _or(dqf, dq), _or(g, delta),
            *q.stride(), *k.stride(), *v.stride(), *ops.stride_args(), *do.stride(),
            *dq.stride(), *_strides4(dqf), *g_strides,
            H, Lq, Lk, D, ops.R, n_qblocks, n_kblocks, ops.scale, ops.scale * LOG2E,
            **flags, ROW_FACTOR_GRAD=row_factor_grad, SUM_DS=sum_ds,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

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
        qf0 = ops.qf[0].float()
        kf0 = ops.kf[0].float()
        dqf = torch.matmul(g_h, kf0).unsqueeze(0).to(q.dtype)
        dkf = torch.matmul(g_h.transpose(-1, -2), qf0).unsqueeze(0).to(q.dtype)
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


def attention_triton(q, k, v, q_factors, k_factors, bias, key_mask, scale: float) -> torch.Tensor:
    """Triton path. Inputs are validated by ``flash_bias_attention``."""
    return _FlashBiasFunction.apply(q, k, v, q_factors, k_factors, bias, key_mask, scale)
