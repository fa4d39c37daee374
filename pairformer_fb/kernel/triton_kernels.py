"""Triton FlashBias kernels: FlashAttention-2 forward and backward with a low-rank bias (factors
folded into the score tile by a second tensor-core product), a dense additive bias and a key mask.

Derivation (FlashAttention-2, Dao 2023), per (batch b, head h), in the log2 domain::

    S   = (scale Q K^T + Qf Kf^T + Bias) log2(e) + MASK_NEG * (mask - 1)
                                    one FMA per score: the shared terms are scaled once per tile
    O   = softmax(S) V              tile by tile with the online softmax (m, l), exp2(S - m)
    m, 1/l                          saved per row for the backward pass

    P   = exp2(S - m) / l           recomputed per tile in the backward kernel
    dV  = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O))
    dQ  = scale dS K,  dK = scale dS^T Q,  dQf = dS Kf,  dKf = dS^T Qf,  dBias = dS

Broadcast operands (factors shared by every row, a bias of shape [1, H, Lq, Lk]) are read with
stride 0, and a program serves two rows at once (optionally four: ``KernelConfig.rows``) so each
shared bias / factor tile is read (and the factor product computed) once for them all. The backward pass is one kernel per key block that
computes S, P, dP, dS once per tile: dK, dV accumulate in registers, dQ is added atomically into
an fp32 buffer (FlashAttention-2's scheme), and the gradients of shared operands come from dS
summed over the rows into one fp32 buffer of the *reduced* (bias) shape, so no per-row
[B, H, Lq, Lk] tensor is ever allocated. By default (rows sharing the bias / factors) the
backward kernel does that sum itself: a program serves two rows and adds their summed dS
atomically (``fuse_ds``: 12.13 ms fwd+bwd at N = 1024 on an H200); otherwise a separate kernel
owns each tile and loops over the rows, recomputing P and dP (12.45 ms; one atomic add per row
and score took 14.3).

This module holds the tile helpers and the forward kernel; the backward kernels are in
``triton_backward``, the launches, operand preparation and autograd in ``triton_launch``, the tile
configurations, their overrides and the program order of the grids in ``tiles``.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


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
def _shared_scores(
    qf,
    kf,
    bias_base,
    s_bq,
    s_bk,
    offs_m,
    offs_n,
    Lq,
    Lk,
    HAS_FACTORS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    """The score terms every row of a group shares, in log2 units: (Qf Kf^T + Bias) log2(e).
    Scaled once per tile here, a row's score is one FMA (``_row_scores``). (A bias stored once
    per call in log2 units as fp32, which skips the conversion and multiply here, measured slower
    on an H200: twice the bias bytes read per tile, benchmarks/session12/.)"""
    if HAS_FACTORS:
        t = tl.dot(qf, tl.trans(kf), input_precision=PRECISION)
        if HAS_BIAS:
            t += _load_tile(bias_base, offs_m, offs_n, s_bq, s_bk, Lq, Lk, EVEN_M, EVEN_N).to(tl.float32)
    else:
        t = _load_tile(bias_base, offs_m, offs_n, s_bq, s_bk, Lq, Lk, EVEN_M, EVEN_N).to(tl.float32)
    return t * _LOG2E


@triton.jit
def _row_scores(
    q,
    k,
    shared,
    scale_log2,
    mask_base,
    s_ml,
    offs_n,
    Lk,
    HAS_SHARED: tl.constexpr,
    KEY_MASK: tl.constexpr,
    EVEN_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """S = (scale Q K^T) log2(e) + shared + key-mask term of one row, in log2 units (the
    softmax is exp2(S - max S), with no multiply per score): one FMA per score with a shared
    term (``_shared_scores``, already in log2 units); keys past Lk get -inf.

    KEY_MASK: how keys are excluded. 0: no key mask; keys past Lk get -inf here unless EVEN_N.
    1, 2: the row's additive key mask (fp32: 0 kept, -1e9 masked, -inf past Lk; see
    ``_additive_key_mask``; -1e9 excludes a key in log2 units as in natural ones), 1 when its
    padding covers every key tile (the load is unmasked, and its -inf padding excludes the keys
    past Lk), 2 when loaded with a bounds check (unmasked in a block inside Lk). 3: no key mask,
    and the shared bias, in tile-padded storage, is -inf past Lk (``pad_bias_to_tiles``): it
    excludes those keys itself, with no select per score."""
    # Added after the product rather than seeding its accumulator: a seeded product waits for
    # the bias tile, and measured 6% (forward) to 25% (backward) slower on an H200. Scaling q
    # instead of the scores cost a register-to-shared-memory copy of every q tile backward.
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if HAS_SHARED:
        s = tl.fma(s, scale_log2, shared)
    else:
        s = s * scale_log2
    if KEY_MASK == 1 or (KEY_MASK == 2 and EVEN_N):  # a block inside Lk: inside the mask row too
        s += tl.load(mask_base + offs_n * s_ml)[None, :]
    elif KEY_MASK == 2:
        s += tl.load(mask_base + offs_n * s_ml, mask=offs_n < Lk, other=float("-inf"))[None, :]
    elif KEY_MASK == 0 and not EVEN_N:
        s = tl.where((offs_n < Lk)[None, :], s, float("-inf"))
    return s


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One online-softmax update of (m, l, acc) with a score tile in log2 units (``_row_scores``)
    and its value tile: exp(S_nat - m_nat) = exp2(S - m). Subtracting before the exp2 keeps its
    argument <= 0 even where S ~ -1e9 (fully masked rows), so P <= 1 fits fp16."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _fwd_row_block(q, k_base, v_base, shared, mask_base, m, l, acc, offs_n, offs_d, s_kl, s_kd, s_vl, s_vd, s_ml,
                   Lk, D, scale_log2, HAS_SHARED: tl.constexpr, KEY_MASK: tl.constexpr, EVEN_N: tl.constexpr,
                   EVEN_D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One row's online-softmax update with one key block."""
    k = _load_tile(k_base, offs_n, offs_d, s_kl, s_kd, Lk, D, EVEN_N, EVEN_D)
    v = _load_tile(v_base, offs_n, offs_d, s_vl, s_vd, Lk, D, EVEN_N, EVEN_D)
    s = _row_scores(q, k, shared, scale_log2, mask_base, s_ml, offs_n, Lk, HAS_SHARED, KEY_MASK, EVEN_N, PRECISION)
    return _softmax_step(s, v, m, l, acc, PRECISION)


@triton.jit
def _fwd_key_block(
    offs_n, q0, q1, q2, q3, k0_base, k1_base, k2_base, k3_base, v0_base, v1_base, v2_base, v3_base,
    mask0, mask1, mask2, mask3, m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3,
    qf, kf_base, bias_base, offs_m, offs_d, offs_r, s_kl, s_kd, s_vl, s_vd, s_kfl, s_kfr, s_bq, s_bk, s_ml,
    Lq, Lk, D, R, scale_log2,
    HAS_FACTORS: tl.constexpr, HAS_BIAS: tl.constexpr, KEY_MASK: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_R: tl.constexpr, BIAS_FULL_M: tl.constexpr,
    BIAS_FULL_N: tl.constexpr, PRECISION: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """The forward's work on one key block for the program's ROWS rows: the shared score terms
    once, then each row's update. EVEN_N: the block lies inside Lk (no bounds masks)."""
    HAS_SHARED: tl.constexpr = HAS_FACTORS or HAS_BIAS
    shared = 0.0
    if HAS_SHARED:
        kf = 0.0
        if HAS_FACTORS:
            kf = _load_tile(kf_base, offs_n, offs_r, s_kfl, s_kfr, Lk, R, EVEN_N, EVEN_R)
        shared = _shared_scores(
            qf, kf, bias_base, s_bq, s_bk, offs_m, offs_n, Lq, Lk,
            HAS_FACTORS, HAS_BIAS, PRECISION, BIAS_FULL_M, BIAS_FULL_N,
        )  # fmt: skip
    m0, l0, acc0 = _fwd_row_block(q0, k0_base, v0_base, shared, mask0, m0, l0, acc0, offs_n, offs_d, s_kl, s_kd,
                                  s_vl, s_vd, s_ml, Lk, D, scale_log2, HAS_SHARED, KEY_MASK, EVEN_N, EVEN_D, PRECISION)  # fmt: skip
    if ROWS >= 2:
        m1, l1, acc1 = _fwd_row_block(q1, k1_base, v1_base, shared, mask1, m1, l1, acc1, offs_n, offs_d, s_kl, s_kd,
                                      s_vl, s_vd, s_ml, Lk, D, scale_log2, HAS_SHARED, KEY_MASK, EVEN_N, EVEN_D, PRECISION)  # fmt: skip
    if ROWS == 4:
        m2, l2, acc2 = _fwd_row_block(q2, k2_base, v2_base, shared, mask2, m2, l2, acc2, offs_n, offs_d, s_kl, s_kd,
                                      s_vl, s_vd, s_ml, Lk, D, scale_log2, HAS_SHARED, KEY_MASK, EVEN_N, EVEN_D, PRECISION)  # fmt: skip
        m3, l3, acc3 = _fwd_row_block(q3, k3_base, v3_base, shared, mask3, m3, l3, acc3, offs_n, offs_d, s_kl, s_kd,
                                      s_vl, s_vd, s_ml, Lk, D, scale_log2, HAS_SHARED, KEY_MASK, EVEN_N, EVEN_D, PRECISION)  # fmt: skip
    return m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3


@triton.jit
def _fwd_epilogue(
    o_base,
    s_ol,
    s_od,
    row_max_ptr,
    row_inv_sum_ptr,
    acc,
    m_i,
    l_i,
    offs_m,
    offs_d,
    Lq,
    D,
    ok,
    gate_base,
    s_gl,
    s_gd,
    HAS_GATE: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    # m (log2 units, as the backward recomputes the scores) and 1/l are kept apart rather than as
    # m + log2(l): with a fully masked row m is about -1e9, where fp32 cannot resolve log2(l) and
    # P would be recomputed as 1 instead of 1/Lk.
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
def _program_rows(pid, n_blocks, B, H, ROWS: tl.constexpr, GRID_ORDER: tl.constexpr, GRID_GROUP: tl.constexpr):
    """Decode a program id into (block, head, first row, second row, second row exists).
    With ROWS == 2 a program serves rows b0 and b0 + 1, which share the bias / factor tiles;
    when B is odd the last group's second row is a clamped copy that writes nothing. ROWS == 4
    adds rows b0 + 2 and b0 + 3 the same way (in the kernels).
    GRID_ORDER (see ``_grid_order``), which neighbouring programs take: 1 the heads of one block
    (the heads of a token are neighbours in a fused projection, so they share cache lines);
    2 the row groups of one (block, head) (a few samples that share one bias tile read it
    while it is in L2); 3 chunks of GRID_GROUP row groups, each chunk's row groups side by side for
    one (block, head) after another (the backward at large N: the row-shared dS sum's tiles get
    GRID_GROUP row groups' adds while in L2, and each row's dQ stays there while its chunk runs);
    0 the blocks of one head."""
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
    elif GRID_ORDER == 3:
        n_groups = tl.cdiv(B, ROWS)
        per_chunk = GRID_GROUP * H * n_blocks
        chunk = pid // per_chunk
        within = pid - chunk * per_chunk
        groups_here = tl.minimum(GRID_GROUP, n_groups - chunk * GRID_GROUP)  # the last chunk may be short
        b0 = ((chunk * GRID_GROUP + within % groups_here) * ROWS).to(tl.int64)
        col = within // groups_here
        h = (col % H).to(tl.int64)
        blk = col // H
    else:
        blk = pid % n_blocks
        rest = pid // n_blocks
        h = (rest % H).to(tl.int64)
        b0 = ((rest // H) * ROWS).to(tl.int64)
    b1 = tl.minimum(b0 + 1, B - 1)
    return blk, h, b0, b1, (b0 + 1) < B


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    QF,
    KF,
    BIAS,
    MASK,
    O,
    ROW_MAX,
    ROW_INV_SUM,
    GATE,
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
    s_ob,
    s_oh,
    s_ol,
    s_od,
    s_gb,
    s_gh,
    s_gl,
    s_gd,
    B,
    H,
    Lq,
    Lk,
    D,
    R,
    n_qblocks,
    scale,
    HAS_FACTORS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    KEY_MASK: tl.constexpr,
    HAS_GATE: tl.constexpr,
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
    scale_log2 = scale * _LOG2E  # scores in log2 units (_row_scores)
    qb, h, b0, b1, row1_ok = _program_rows(tl.program_id(0), n_qblocks, B, H, ROWS, GRID_ORDER, GRID_GROUP)
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
    # rows a program does not serve: placeholders the key blocks pass through untouched
    q1, q2, q3, k1_base, k2_base, k3_base, v1_base, v2_base, v3_base = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    m1, l1, acc1, m2, l2, acc2, m3, l3, acc3 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    b2, b3 = b0, b0
    if ROWS >= 2:
        q1 = _load_tile(Q + b1 * s_qb + h * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
        k1_base = K + b1 * s_kb + h * s_kh
        v1_base = V + b1 * s_vb + h * s_vh
        m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l1 = tl.zeros([BLOCK_M], tl.float32)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if ROWS == 4:  # rows b0 + 2, b0 + 3 (clamped copies past B, which write nothing)
        b2 = tl.minimum(b0 + 2, B - 1)
        b3 = tl.minimum(b0 + 3, B - 1)
        q2 = _load_tile(Q + b2 * s_qb + h * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
        q3 = _load_tile(Q + b3 * s_qb + h * s_qh, offs_m, offs_d, s_ql, s_qd, Lq, D, EVEN_M, EVEN_D)
        k2_base, v2_base = K + b2 * s_kb + h * s_kh, V + b2 * s_vb + h * s_vh
        k3_base, v3_base = K + b3 * s_kb + h * s_kh, V + b3 * s_vb + h * s_vh
        m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        m3 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l2 = tl.zeros([BLOCK_M], tl.float32)
        l3 = tl.zeros([BLOCK_M], tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # the key blocks inside Lk without bounds masks (pipelined), then the partial last one, if
    # any, with them: with the log2 scores, the sm_90 loop at N = 1170 went 813 -> 670
    # instructions per block, to the level of N = 1024's 657 (benchmarks/session12/loop_instructions_cpu/)
    if EVEN_N:
        n_full = Lk
    else:
        n_full = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3 = _fwd_key_block(
            start_n + offs_n0, q0, q1, q2, q3, k0_base, k1_base, k2_base, k3_base, v0_base, v1_base, v2_base, v3_base,
            MASK + b0 * s_mb, MASK + b1 * s_mb, MASK + b2 * s_mb, MASK + b3 * s_mb,
            m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3,
            qf, kf_base, bias_base, offs_m, offs_d, offs_r, s_kl, s_kd, s_vl, s_vd, s_kfl, s_kfr, s_bq, s_bk, s_ml,
            Lq, Lk, D, R, scale_log2,
            HAS_FACTORS, HAS_BIAS, KEY_MASK, True, EVEN_D, EVEN_R, BIAS_FULL_M, True, PRECISION, ROWS,
        )  # fmt: skip
    if not EVEN_N:
        m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3 = _fwd_key_block(
            n_full + offs_n0, q0, q1, q2, q3, k0_base, k1_base, k2_base, k3_base, v0_base, v1_base, v2_base, v3_base,
            MASK + b0 * s_mb, MASK + b1 * s_mb, MASK + b2 * s_mb, MASK + b3 * s_mb,
            m0, l0, acc0, m1, l1, acc1, m2, l2, acc2, m3, l3, acc3,
            qf, kf_base, bias_base, offs_m, offs_d, offs_r, s_kl, s_kd, s_vl, s_vd, s_kfl, s_kfr, s_bq, s_bk, s_ml,
            Lq, Lk, D, R, scale_log2,
            HAS_FACTORS, HAS_BIAS, KEY_MASK, False, EVEN_D, EVEN_R, BIAS_FULL_M, BIAS_FULL_N, PRECISION, ROWS,
        )  # fmt: skip

    row0 = (b0 * H + h) * Lq
    _fwd_epilogue(
        O + b0 * s_ob + h * s_oh,
        s_ol,
        s_od,
        ROW_MAX + row0,
        ROW_INV_SUM + row0,
        acc0,
        m0,
        l0,
        offs_m,
        offs_d,
        Lq,
        D,
        True,
        GATE + b0 * s_gb + h * s_gh,
        s_gl,
        s_gd,
        HAS_GATE,
        EVEN_D,
    )
    if ROWS >= 2:
        row1 = (b1 * H + h) * Lq
        _fwd_epilogue(
            O + b1 * s_ob + h * s_oh,
            s_ol,
            s_od,
            ROW_MAX + row1,
            ROW_INV_SUM + row1,
            acc1,
            m1,
            l1,
            offs_m,
            offs_d,
            Lq,
            D,
            row1_ok,
            GATE + b1 * s_gb + h * s_gh,
            s_gl,
            s_gd,
            HAS_GATE,
            EVEN_D,
        )
    if ROWS == 4:
        _fwd_epilogue(
            O + b2 * s_ob + h * s_oh,
            s_ol,
            s_od,
            ROW_MAX + (b2 * H + h) * Lq,
            ROW_INV_SUM + (b2 * H + h) * Lq,
            acc2,
            m2,
            l2,
            offs_m,
            offs_d,
            Lq,
            D,
            (b0 + 2) < B,
            GATE + b2 * s_gb + h * s_gh,
            s_gl,
            s_gd,
            HAS_GATE,
            EVEN_D,
        )
        _fwd_epilogue(
            O + b3 * s_ob + h * s_oh,
            s_ol,
            s_od,
            ROW_MAX + (b3 * H + h) * Lq,
            ROW_INV_SUM + (b3 * H + h) * Lq,
            acc3,
            m3,
            l3,
            offs_m,
            offs_d,
            Lq,
            D,
            (b0 + 3) < B,
            GATE + b3 * s_gb + h * s_gh,
            s_gl,
            s_gd,
            HAS_GATE,
            EVEN_D,
        )
