"""Triton FlashBias backward kernels (the derivation is in ``triton_kernels``): delta =
rowsum(dO * O), the backward pass per key block (``_bwd_kernel``: dK, dV in registers, dQ by
atomic adds, the row-shared dS sum fused or not) and the separate row-shared dS sum
(``_ds_sum_kernel``). Launched by ``triton_launch``."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import _LOG2E, _load_tile, _program_rows, _row_scores, _shared_scores


@triton.jit
def _bwd_delta_kernel(
    O,
    DO,
    DELTA,
    s_ob,
    s_oh,
    s_ol,
    s_od,
    s_dob,
    s_doh,
    s_dol,
    s_dod,
    H,
    Lq,
    D,
    n_qblocks,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_D: tl.constexpr,
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
def _bwd_row_step(b, row_ok, k, v, dk, dv, shared, m_start, offs_m, offs_n, offs_d, h,
                  Q, s_qb, s_qh, s_ql, s_qd, DO, s_dob, s_doh, s_dol, s_dod, MASK, s_mb, s_ml,
                  DQ_ACC, s_dqb, s_dqh, s_dql, s_dqd, DQ_DESC, ROW_MAX, ROW_INV_SUM, DELTA, H, Lq, Lk, D, scale,
                  HAS_SHARED: tl.constexpr, KEY_MASK: tl.constexpr, EVEN_N: tl.constexpr, PRECISION: tl.constexpr,
                  EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, TMA_DQ: tl.constexpr):  # fmt: skip
    """One (query block, key block) tile of row b (row_ok: not a clamped copy past B, which
    adds nothing): updates its dK, dV, adds its dQ atomically and returns dS (fp32). TMA_DQ: the
    dQ tile goes by one bulk tensor reduce-add through DQ_DESC ([B, H, Lq, D] fp32, at
    [b, h, m_start, 0]; the copy engine drops rows and columns out of bounds) instead of
    per-thread atomics; a clamped row adds zeros."""
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_dob + h * s_doh
    stats_row = (b * H + h) * Lq
    mask_base = MASK + b * s_mb
    dq_base = DQ_ACC + b * s_dqb + h * s_dqh
    m_ok = offs_m < Lq
    q = _load_tile(q_base, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
    do = _load_tile(do_base, offs_m, offs_d, s_dol, s_dod, Lq, D, EVEN_M, EVEN_D)
    # rows past the end get m = +inf, hence P = 0
    m_row = tl.load(ROW_MAX + stats_row + offs_m, mask=m_ok, other=float("inf"))
    inv_l = tl.load(ROW_INV_SUM + stats_row + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + stats_row + offs_m, mask=m_ok, other=0.0)
    s = _row_scores(q, k, shared, scale * _LOG2E, mask_base, s_ml, offs_n, Lk, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION)
    p = tl.math.exp2(s - m_row[:, None]) * inv_l[:, None]
    dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    ds_lp = ds.to(q.dtype)
    dk += tl.dot(tl.trans(ds_lp), q, input_precision=PRECISION)
    dq = tl.dot(ds_lp, k, input_precision=PRECISION) * scale
    if TMA_DQ:
        dq = tl.where(row_ok, dq, 0.0)
        DQ_DESC.atomic_add(
            [b.to(tl.int32), h.to(tl.int32), m_start.to(tl.int32), 0], dq.reshape(1, 1, dq.shape[0], dq.shape[1])
        )
    else:
        tl.atomic_add(
            dq_base + offs_m[:, None] * s_dql + offs_d[None, :] * s_dqd,
            dq,
            mask=(m_ok[:, None] & (offs_d < D)[None, :]) & row_ok,
            sem="relaxed",
        )
    return dk, dv, ds


@triton.jit
def _bwd_store_row(DK, s_dkb, s_dkh, s_dkl, s_dkd, DV, s_dvb, s_dvh, s_dvl, s_dvd, b, h, dk, dv, scale, offs_n, offs_d,
                   mask):  # fmt: skip
    """Row b's dK (scaled here, once) and dV tiles of one key block."""
    tl.store(
        DK + b * s_dkb + h * s_dkh + offs_n[:, None] * s_dkl + offs_d[None, :] * s_dkd,
        (dk * scale).to(DK.dtype.element_ty),
        mask=mask,
    )
    tl.store(
        DV + b * s_dvb + h * s_dvh + offs_n[:, None] * s_dvl + offs_d[None, :] * s_dvd,
        dv.to(DV.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _bwd_kernel(
    Q,
    K,
    V,
    QF,
    KF,
    BIAS,
    MASK,
    DO,
    ROW_MAX,
    ROW_INV_SUM,
    DELTA,
    DK,
    DV,
    DQ_ACC,
    DKF,
    DQF_ACC,
    DS_SUM,
    DQ_DESC,
    DS_DESC,
    s_qb,
    s_qh,
    s_ql,
    s_qd,
    s_kb,
    s_kh,
    s_kl,
    s_kd,
    s_vb,
    s_vh,
    s_vl,
    s_vd,
    s_qfb,
    s_qfh,
    s_qfl,
    s_qfr,
    s_kfb,
    s_kfh,
    s_kfl,
    s_kfr,
    s_bb,
    s_bh,
    s_bq,
    s_bk,
    s_mb,
    s_ml,
    s_dob,
    s_doh,
    s_dol,
    s_dod,
    s_dkb,
    s_dkh,
    s_dkl,
    s_dkd,
    s_dvb,
    s_dvh,
    s_dvl,
    s_dvd,
    s_dqb,
    s_dqh,
    s_dql,
    s_dqd,
    s_dkfb,
    s_dkfh,
    s_dkfl,
    s_dkfr,
    s_dqfb,
    s_dqfh,
    s_dqfl,
    s_dqfr,
    s_gh,
    s_gq,
    s_gk,
    B,
    H,
    Lq,
    Lk,
    D,
    R,
    n_kblocks,
    n_qblocks,
    scale,
    HAS_FACTORS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    KEY_MASK: tl.constexpr,
    ROW_FACTOR_GRAD: tl.constexpr,
    FUSE_DS: tl.constexpr,
    DS_FULL: tl.constexpr,
    DS_STORE: tl.constexpr,
    STAGGER_KB: tl.constexpr,
    TMA_DQ: tl.constexpr,
    TMA_DS: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    EVEN_R: tl.constexpr,
    BIAS_FULL_M: tl.constexpr,
    BIAS_FULL_N: tl.constexpr,
    GRID_ORDER: tl.constexpr,
    GRID_GROUP: tl.constexpr,
    PRECISION: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One key block of one row group: S, P, dP and dS are computed once per tile; dK, dV (and
    per-row dKf) accumulate in registers, dQ (and per-row dQf) go to fp32 buffers by atomic adds
    (FlashAttention-2's scheme for dQ). ROWS: 1, 2 or 4 rows per program, sharing the bias /
    factor tiles (with 4 every tile compiled for sm_90 spills, benchmarks/session14/
    bwd_rows4_cpu_compile/: not a default). ROW_FACTOR_GRAD implies ROWS == 1. FUSE_DS (rows share
    the bias / factors): the program's dS, summed over its rows, is added atomically into the
    zeroed fp32 buffer DS_SUM [1, GH, Lq, Lk] (s_gh = 0 when the heads are summed too) instead
    of a separate _ds_sum_kernel pass. DS_FULL: DS_SUM's storage is padded to whole tiles
    (tiles.DS_TILE_PAD), so those adds go unmasked; the padding gets dS = 0 (P = 0 past Lq / Lk)
    and is never read. DS_STORE: this program is the only one to write its dS tiles (one row
    group, the bias's heads kept, e.g. the single attention's [1, H, L, L] bias): a plain store
    into DS_SUM in its own dtype (the bias gradient itself: no zeroing, atomics or cast).
    TMA_DQ / TMA_DS (tiles.TMA_REDUCE, sm_90 and later): the dQ tiles / the fused dS sum's tiles
    are added by the copy engine's bulk tensor reduce-add through the descriptors DQ_DESC
    ([B, H, Lq, D] fp32) / DS_DESC ([GH, Lq, Lk] fp32) instead of per-thread atomics."""
    HAS_SHARED: tl.constexpr = HAS_FACTORS or HAS_BIAS
    kb, h, b0, b1, row1_ok = _program_rows(tl.program_id(0), n_kblocks, B, H, ROWS, GRID_ORDER, GRID_GROUP)
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
    if ROWS >= 2:
        k1 = _load_tile(K + b1 * s_kb + h * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
        v1 = _load_tile(V + b1 * s_vb + h * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
        dk1 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv1 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    b2, b3 = b0, b0
    row2_ok, row3_ok = row1_ok, row1_ok
    if ROWS == 4:  # rows b0 + 2, b0 + 3 (clamped copies past B, which add and write nothing)
        b2 = tl.minimum(b0 + 2, B - 1)
        b3 = tl.minimum(b0 + 3, B - 1)
        row2_ok = (b0 + 2) < B
        row3_ok = (b0 + 3) < B
        k2 = _load_tile(K + b2 * s_kb + h * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
        v2 = _load_tile(V + b2 * s_vb + h * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
        k3 = _load_tile(K + b3 * s_kb + h * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
        v3 = _load_tile(V + b3 * s_vb + h * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
        dk2 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv2 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dk3 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv3 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # row groups start at different query blocks: fewer collisions of their dQ atomic adds;
    # STAGGER_KB (tiles.DQ_STAGGER): the key blocks of a row group and head too
    qb_first = (b0 // ROWS) % n_qblocks
    if STAGGER_KB:
        qb_first = (b0 // ROWS + kb) % n_qblocks
    for i in range(0, n_qblocks):
        m_start = ((qb_first + i) % n_qblocks) * BLOCK_M
        offs_m = m_start + offs_m0
        shared = 0.0
        if HAS_SHARED:
            qf = 0.0
            if HAS_FACTORS:
                qf = _load_tile(qf_base, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
            shared = _shared_scores(
                qf,
                kf,
                bias_base,
                s_bq,
                s_bk,
                offs_m,
                offs_n,
                Lq,
                Lk,
                HAS_FACTORS,
                HAS_BIAS,
                PRECISION,
                BIAS_FULL_M,
                BIAS_FULL_N,
            )
        dk0, dv0, ds0 = _bwd_row_step(
            b0, True, k0, v0, dk0, dv0, shared, m_start, offs_m, offs_n, offs_d, h,
            Q, s_qb, s_qh, s_ql, s_qd, DO, s_dob, s_doh, s_dol, s_dod, MASK, s_mb, s_ml,
            DQ_ACC, s_dqb, s_dqh, s_dql, s_dqd, DQ_DESC, ROW_MAX, ROW_INV_SUM, DELTA, H, Lq, Lk, D,
            scale, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION, EVEN_M, EVEN_D, TMA_DQ,
        )  # fmt: skip
        if ROW_FACTOR_GRAD:
            ds_lp = ds0.to(kf.dtype)  # type: ignore[attr-defined]  # a tl tensor (mypy reads shared = 0.0)
            dkf += tl.dot(tl.trans(ds_lp), qf, input_precision=PRECISION)
            tl.atomic_add(
                DQF_ACC + b0 * s_dqfb + h * s_dqfh + offs_m[:, None] * s_dqfl + offs_r[None, :] * s_dqfr,
                tl.dot(ds_lp, kf, input_precision=PRECISION),
                mask=(offs_m < Lq)[:, None] & (offs_r < R)[None, :],
                sem="relaxed",
            )
        if ROWS >= 2:
            dk1, dv1, ds1 = _bwd_row_step(
                b1, row1_ok, k1, v1, dk1, dv1, shared, m_start, offs_m, offs_n, offs_d, h,
                Q, s_qb, s_qh, s_ql, s_qd, DO, s_dob, s_doh, s_dol, s_dod, MASK, s_mb, s_ml,
                DQ_ACC, s_dqb, s_dqh, s_dql, s_dqd, DQ_DESC, ROW_MAX, ROW_INV_SUM, DELTA, H, Lq, Lk, D,
                scale, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION, EVEN_M, EVEN_D, TMA_DQ,
            )  # fmt: skip
            if FUSE_DS:  # a clamped copy of the last row (odd B) adds nothing
                ds0 += ds1 * row1_ok.to(tl.float32)
        if ROWS == 4:
            dk2, dv2, ds2 = _bwd_row_step(
                b2, row2_ok, k2, v2, dk2, dv2, shared, m_start, offs_m, offs_n, offs_d, h,
                Q, s_qb, s_qh, s_ql, s_qd, DO, s_dob, s_doh, s_dol, s_dod, MASK, s_mb, s_ml,
                DQ_ACC, s_dqb, s_dqh, s_dql, s_dqd, DQ_DESC, ROW_MAX, ROW_INV_SUM, DELTA, H, Lq, Lk, D,
                scale, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION, EVEN_M, EVEN_D, TMA_DQ,
            )  # fmt: skip
            dk3, dv3, ds3 = _bwd_row_step(
                b3, row3_ok, k3, v3, dk3, dv3, shared, m_start, offs_m, offs_n, offs_d, h,
                Q, s_qb, s_qh, s_ql, s_qd, DO, s_dob, s_doh, s_dol, s_dod, MASK, s_mb, s_ml,
                DQ_ACC, s_dqb, s_dqh, s_dql, s_dqd, DQ_DESC, ROW_MAX, ROW_INV_SUM, DELTA, H, Lq, Lk, D,
                scale, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION, EVEN_M, EVEN_D, TMA_DQ,
            )  # fmt: skip
            if FUSE_DS:
                ds0 += ds2 * row2_ok.to(tl.float32) + ds3 * row3_ok.to(tl.float32)
        if FUSE_DS and DS_STORE:
            tl.store(
                DS_SUM + h * s_gh + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk,
                ds0.to(DS_SUM.dtype.element_ty),
                mask=(offs_m < Lq)[:, None] & (offs_n < Lk)[None, :],
            )
        elif FUSE_DS and TMA_DS:
            DS_DESC.atomic_add(
                [tl.where(s_gh == 0, 0, h).to(tl.int32), m_start.to(tl.int32), (kb * BLOCK_N).to(tl.int32)],
                ds0.reshape(1, BLOCK_M, BLOCK_N),
            )
        elif FUSE_DS:
            if DS_FULL:
                tl.atomic_add(DS_SUM + h * s_gh + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk, ds0, sem="relaxed")
            else:
                tl.atomic_add(
                    DS_SUM + h * s_gh + offs_m[:, None] * s_gq + offs_n[None, :] * s_gk,
                    ds0,
                    mask=(offs_m < Lq)[:, None] & (offs_n < Lk)[None, :],
                    sem="relaxed",
                )

    nd_ok = (offs_n < Lk)[:, None] & (offs_d < D)[None, :]
    _bwd_store_row(
        DK, s_dkb, s_dkh, s_dkl, s_dkd, DV, s_dvb, s_dvh, s_dvl, s_dvd, b0, h, dk0, dv0, scale, offs_n, offs_d, nd_ok
    )
    if ROWS >= 2:
        _bwd_store_row(DK, s_dkb, s_dkh, s_dkl, s_dkd, DV, s_dvb, s_dvh, s_dvl, s_dvd, b1, h, dk1, dv1, scale, offs_n, offs_d,
                       nd_ok & row1_ok)  # fmt: skip
    if ROWS == 4:
        _bwd_store_row(DK, s_dkb, s_dkh, s_dkl, s_dkd, DV, s_dvb, s_dvh, s_dvl, s_dvd, b2, h, dk2, dv2, scale, offs_n, offs_d,
                       nd_ok & row2_ok)  # fmt: skip
        _bwd_store_row(DK, s_dkb, s_dkh, s_dkl, s_dkd, DV, s_dvb, s_dvh, s_dvl, s_dvd, b3, h, dk3, dv3, scale, offs_n, offs_d,
                       nd_ok & row3_ok)  # fmt: skip
    if ROW_FACTOR_GRAD:
        tl.store(
            DKF + b0 * s_dkfb + h * s_dkfh + offs_n[:, None] * s_dkfl + offs_r[None, :] * s_dkfr,
            dkf.to(DKF.dtype.element_ty),
            mask=(offs_n < Lk)[:, None] & (offs_r < R)[None, :],
        )


@triton.jit
def _ds_sum_kernel(
    Q,
    K,
    V,
    QF,
    KF,
    BIAS,
    MASK,
    DO,
    ROW_MAX,
    ROW_INV_SUM,
    DELTA,
    DS_SUM,
    s_qb,
    s_qh,
    s_ql,
    s_qd,
    s_kb,
    s_kh,
    s_kl,
    s_kd,
    s_vb,
    s_vh,
    s_vl,
    s_vd,
    s_qfb,
    s_qfh,
    s_qfl,
    s_qfr,
    s_kfb,
    s_kfh,
    s_kfl,
    s_kfr,
    s_bb,
    s_bh,
    s_bq,
    s_bk,
    s_mb,
    s_ml,
    s_dob,
    s_doh,
    s_dol,
    s_dod,
    s_gb,
    s_gh,
    s_gq,
    s_gk,
    B,
    H,
    Lq,
    Lk,
    D,
    R,
    n_qblocks,
    n_kblocks,
    GB,
    GH,
    scale,
    HAS_FACTORS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    KEY_MASK: tl.constexpr,
    ROW_FACTORS: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLITS: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    EVEN_R: tl.constexpr,
    BIAS_FULL_M: tl.constexpr,
    BIAS_FULL_N: tl.constexpr,
    GRID_ORDER: tl.constexpr,
    GRID_GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
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
            tile_shared = _shared_scores(
                qf,
                kf,
                BIAS + b_lo * s_bb + h64 * s_bh,
                s_bq,
                s_bk,
                offs_m,
                offs_n,
                Lq,
                Lk,
                TILE_FACTORS,
                HAS_BIAS,
                PRECISION,
                EVEN_M,
                EVEN_N,
            )
        for b in range(b_lo, b_hi):
            b64 = tl.cast(b, tl.int64)
            shared = tile_shared
            if ROW_FACTORS:
                qf_row = _load_tile(QF + b64 * s_qfb + h64 * s_qfh, offs_m, offs_r, s_qfl, s_qfr, Lq, R, EVEN_M, EVEN_R)
                kf_row = _load_tile(KF + b64 * s_kfb + h64 * s_kfh, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
                shared += tl.dot(qf_row, tl.trans(kf_row), input_precision=PRECISION) * _LOG2E
            q = _load_tile(Q + b64 * s_qb + h64 * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
            do = _load_tile(DO + b64 * s_dob + h64 * s_doh, offs_m, offs_d, s_dol, s_dod, Lq, D, EVEN_M, EVEN_D)
            k = _load_tile(K + b64 * s_kb + h64 * s_kh, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
            v = _load_tile(V + b64 * s_vb + h64 * s_vh, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
            row = (b64 * H + h64) * Lq
            m_row = tl.load(ROW_MAX + row + offs_m, mask=m_ok, other=float("inf"))
            inv_l = tl.load(ROW_INV_SUM + row + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + row + offs_m, mask=m_ok, other=0.0)
            s = _row_scores(
                q,
                k,
                shared,
                scale * _LOG2E,
                MASK + b64 * s_mb,
                s_ml,
                offs_n,
                Lk,
                HAS_SHARED,
                KEY_MASK,
                EVEN_N,
                PRECISION,
            )
            p = tl.math.exp2(s - m_row[:, None]) * inv_l[:, None]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            acc += p * (dp - delta[:, None])
    out_ptrs = (
        DS_SUM
        + tl.cast(gb, tl.int64) * s_gb
        + tl.cast(gh, tl.int64) * s_gh
        + offs_m[:, None] * s_gq
        + offs_n[None, :] * s_gk
    )
    out_mask = m_ok[:, None] & (offs_n < Lk)[None, :]
    if SPLITS > 1:
        tl.atomic_add(out_ptrs, acc, mask=out_mask, sem="relaxed")
    else:
        tl.store(out_ptrs, acc, mask=out_mask)
