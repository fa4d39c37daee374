"""Triangle attention (AF2 supplement Algorithms 13/14, AF3 supplement Algorithms 14/15) on
the fused FlashBias op."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import flash_bias_attention
from ..kernel.layer_norm import layer_norm
from ..kernel.op import Backend, check_backend
from .common import (
    FlashBiasModule,
    Mode,
    check_count,
    check_features,
    check_heads,
    check_shape,
    concat_linear_params,
    head_major_pair_bias,
    shape_str,
)
from .factor_network import BiasSample, FactorConfig, FactorNetwork

Node = Literal["starting", "ending"]
EndingBias = Literal["transposed", "untransposed"]


class FlashBiasTriangleAttention(FlashBiasModule):
    r"""Drop-in triangle attention around the starting or the ending node.

    Input pair rep z [*, N, N, c_z] and pair mask [*, N, N] (nonzero / True = valid); output the
    update [*, N, N, c_z] (the caller adds the residual, as the hosts do). With x = LN(z) and,
    for every pair (a, c), per-head projections q[a,c,h], k[a,c,h], v[a,c,h] (D wide each),
    the pair bias b[a,c,h] = linear_b(x[a,c])_h and the gate g[a,c,h] = sigmoid(linear_g(x[a,c]))::

        starting node:  logits[i,h,j,k] = q[i,j,h].k[i,k,h] / sqrt(D) + b[j,k,h] + 1e9 (mask[i,k] - 1)
                        o[i,j,h] = sum_k softmax_k(logits[i,h,j,:]) v[i,k,h]

        ending node:    logits[i,h,j,k] = q[i,j,h].k[k,j,h] / sqrt(D) + BIAS + 1e9 (mask[k,j] - 1)
                        o[i,j,h] = sum_k softmax_k(logits[i,h,j,:]) v[k,j,h]
          ending_bias="transposed":    BIAS = b[k,i,h]   ("bias from z[k,i]")
          ending_bias="untransposed":  BIAS = b[i,k,h]   ("bias from z[i,k]")

        update[i,j] = linear_o(concat_h g[i,j,h] * o[i,j,h])

    The two ending-node conventions differ for a non-symmetric bias, and both exist:

    * "transposed": the supplements' formula (AF2 Alg. 14, AF3 Alg. 15: b_ki) and the code of
      OpenFold, Boltz(-2) and Protenix, which transpose z (and the mask) and run the
      starting-node code, so the bias is projected from the transposed z.
    * "untransposed": AlphaFold 3's released code (GridSelfAttention projects the bias before
      transposing the activations) and OpenFold3's ``transpose_bias=True``: the bias is
      projected from the untransposed z.

    There is no default for the ending node: ``ending_bias`` must be given with
    ``node="ending"`` (and is rejected with ``node="starting"``).

    Per attention row the op gets B = rows, queries and keys along the row, the bias as one
    [1, H, N, N] tensor shared by every row (stride 0) and the key mask of each row. In the
    op's terms (query j, key k of a row) the bias is b[j,k] for the starting node and the
    untransposed ending node and b[k,j] for the transposed one; it is computed once,
    head-major, from the untransposed x. The op reads the bias tile once per row, so the
    transposed convention copies its bias to key-contiguous order (H * N^2 elements, N times
    fewer than the op reads) rather than passing a transposed view; likewise the ending node's
    key masks. The factor network sees the pair rep in the bias' orientation, so that
    phi_q[h,j] . phi_k[h,k] approximates exactly what the op adds.

    Parameters (hosts map theirs one to one): ``layer_norm``, ``linear_q``, ``linear_k``,
    ``linear_v`` (c_z -> H*D), ``linear_b`` (c_z -> H, no bias), ``linear_g`` (c_z -> H*D),
    ``linear_o`` (H*D -> c_z), and ``factor_network`` when a ``factor_config`` is given.

    Args:
        c_z: pair channels. n_heads: H. head_dim: D (<= 128).
        node: "starting" or "ending".
        ending_bias: the ending-node convention, see above; required iff node == "ending".
        q_bias, k_bias, v_bias, gate_bias, out_bias: whether linear_q / _k / _v / _g / _o have
            a bias term (defaults: the AF2/AF3 layout, biases on the gate and output only).
        layer_norm_eps: epsilon of ``layer_norm``.
        factor_config: builds ``factor_network`` (needed by "lowrank" and "distill").
        mode: "exact", "lowrank" or "distill" (see ``FlashBiasModule``); settable later.
        backend: passed to ``flash_bias_attention`` ("auto": Triton on CUDA, torch otherwise).
        chunk_budget_bytes: how a host's ``chunk_size`` is read. Hosts chunk triangle attention
            to bound their N x N x N logits, which the op never materialises; what our chunks
            bound is the fused q/k/v/g projection of the rows in one op call. So ``chunk_size``
            is a lower bound: each call takes as many rows as fit in this many bytes of
            projection (default 2 GiB: a Protenix model at 1,170 tokens, which its inference
            chunks by 512 rows, runs in one call). 0 follows ``chunk_size`` exactly.
    """

    def __init__(
        self,
        c_z: int = 128,
        n_heads: int = 4,
        head_dim: int = 32,
        *,
        node: Node = "starting",
        ending_bias: EndingBias | None = None,
        q_bias: bool = False,
        k_bias: bool = False,
        v_bias: bool = False,
        gate_bias: bool = True,
        out_bias: bool = True,
        layer_norm_eps: float = 1e-5,
        factor_config: FactorConfig | None = None,
        mode: Mode = "exact",
        backend: Backend = "auto",
        chunk_budget_bytes: int = 2 << 30,
    ):
        check_count("c_z", c_z)
        check_heads(n_heads, head_dim)
        check_backend(backend)
        if node not in ("starting", "ending"):
            raise ValueError(f"node must be 'starting' or 'ending', got {node!r}")
        if node == "ending" and ending_bias not in ("transposed", "untransposed"):
            raise ValueError(
                "node='ending' needs ending_bias='transposed' (AF2 / OpenFold / Boltz / Protenix: "
                "bias from the transposed z) or 'untransposed' (AF3 code / OpenFold3 "
                f"transpose_bias=True), got {ending_bias!r}"
            )
        if isinstance(chunk_budget_bytes, bool) or not isinstance(chunk_budget_bytes, int) or chunk_budget_bytes < 0:
            raise ValueError(f"chunk_budget_bytes must be an int >= 0, got {chunk_budget_bytes!r}")
        if node == "starting" and ending_bias is not None:
            raise ValueError(f"ending_bias={ending_bias!r} only applies to node='ending'")
        hidden = n_heads * head_dim
        super().__init__()
        self.c_z, self.n_heads, self.head_dim = c_z, n_heads, head_dim
        self.node, self.ending_bias = node, ending_bias
        self.backend = backend
        self.chunk_budget_bytes = chunk_budget_bytes
        self.layer_norm = nn.LayerNorm(c_z, eps=layer_norm_eps)
        self.linear_q = nn.Linear(c_z, hidden, bias=q_bias)
        self.linear_k = nn.Linear(c_z, hidden, bias=k_bias)
        self.linear_v = nn.Linear(c_z, hidden, bias=v_bias)
        self.linear_b = nn.Linear(c_z, n_heads, bias=False)
        self.linear_g = nn.Linear(c_z, hidden, bias=gate_bias)
        self.linear_o = nn.Linear(hidden, c_z, bias=out_bias)
        self.factor_network = FactorNetwork(c_z, n_heads, factor_config) if factor_config is not None else None
        self.mode = mode

    def extra_repr(self) -> str:
        ending = f", ending_bias={self.ending_bias!r}" if self.node == "ending" else ""
        return (
            f"c_z={self.c_z}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"node={self.node!r}{ending}, mode={self.mode!r}"
        )

    @property
    def _bias_from_transposed_pair(self) -> bool:
        return self.node == "ending" and self.ending_bias == "transposed"

    def forward(
        self,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        s_inputs: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | BiasSample]:
        """
        Args:
            z: [*, N, N, c_z] pair representation.
            mask: [*, N, N] pair mask (bool or 0/1), or None for no masking.
            s_inputs: [*, N, c_s_inputs] single input features, for a factor network that uses
                them ("lowrank" / "distill" only; ignored otherwise).
            chunk_size: at least this many attention rows per op call (and per q/k/v/g
                projection), more as ``chunk_budget_bytes`` allows; None processes all N rows of
                a batch element at once.

        Returns:
            the update [*, N, N, c_z]; in "distill" mode (update, bias approximation loss), or
            (update, BiasSample) with ``defer_distill_loss``.
        """
        mode = self.mode
        self._check_mode(mode)
        self._check_inputs(z, mask, chunk_size)
        pair = layer_norm(z, self.layer_norm, for_matmul=True)
        pair_mask = mask.to(torch.bool) if mask is not None else None
        source, source_mask = self._bias_orientation(pair, pair_mask)

        if mode == "lowrank":
            assert self.factor_network is not None  # _check_mode: this mode needs one
            factors = self.factor_network(source, source_mask, s_inputs)
            return self._attend(pair, pair_mask, None, factors, chunk_size)
        bias = self._dense_bias(pair)
        update = self._attend(pair, pair_mask, bias, None, chunk_size)
        if mode == "distill":
            assert self.factor_network is not None  # _check_mode: this mode needs one
            return update, self.factor_network.distill_output(
                source, source_mask, s_inputs, bias, self.defer_distill_loss
            )
        return update

    def bias_target(self, z: torch.Tensor, mask: torch.Tensor | None = None):
        """What a factor network is fitted to: ``(pair, pair_mask, bias)``, the normalised pair
        rep [*, N, N, c_z] and bool mask [*, N, N] (or None) in the bias' orientation (the factor
        network's input) and the dense bias [*, H, N, N] that the op adds in "exact" mode, so
        that ``bias_approximation_loss(*factor_network(pair, pair_mask), bias, pair_mask)`` is
        the "distill" mode's loss. Arguments as for ``forward``."""
        self._check_inputs(z, mask, None)
        pair = layer_norm(z, self.layer_norm)
        source, source_mask = self._bias_orientation(pair, mask.to(torch.bool) if mask is not None else None)
        return source, source_mask, self._dense_bias(pair)

    def _bias_orientation(self, pair, pair_mask):
        """The pair rep and mask in the bias' orientation: bias[*, h, j, k] = linear_b(source[*, j, k])."""
        if not self._bias_from_transposed_pair:
            return pair, pair_mask
        return pair.transpose(-2, -3), pair_mask.transpose(-1, -2) if pair_mask is not None else None

    def _dense_bias(self, pair):
        bias = head_major_pair_bias(pair, self.linear_b)
        if self._bias_from_transposed_pair:
            bias = bias.transpose(-1, -2).contiguous()  # see the class docstring
        return bias

    def _check_inputs(self, z, mask, chunk_size) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 3 or z.shape[-3] != z.shape[-2] or z.shape[-1] != self.c_z:
            raise ValueError(
                f"z must be [*, N, N, c_z] (square in its two token dims) with c_z = {self.c_z}, "
                f"got {shape_str(z.shape)}"
            )
        check_features("z", z, self.linear_q.weight)
        if mask is not None:
            check_shape("mask", mask, z.shape[:-1], "[*, N, N] (z's shape without c_z)")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")

    def _attend(self, pair, pair_mask, bias, factors, chunk_size) -> torch.Tensor:
        """Gated attention output, projected: the update [*, N, N, c_z].

        Loops over batch elements and chunks of attention rows; each chunk gets one fused q/k/v/g
        projection and one op call. Rows are z's dim -3 for the starting node and dim -2 for the
        ending node; the pair-sized tensors stay in z's orientation and the op reads q/k/v and
        the gate through strided views, so no transpose of them is materialised.
        """
        n = pair.shape[-2]
        batch_shape = pair.shape[:-3]
        row_dim = 0 if self.node == "starting" else 1  # in a per-element [N, N, ...] tensor
        weight, proj_bias = concat_linear_params([self.linear_q, self.linear_k, self.linear_v, self.linear_g])
        pairs = pair.reshape(-1, n, n, self.c_z)
        # key_mask[i, k] of attention row i: mask[i, k] (starting) or mask[k, i] (ending)
        row_masks = None
        if pair_mask is not None:
            row_masks = pair_mask.reshape(-1, n, n)
            row_masks = row_masks if row_dim == 0 else row_masks.transpose(-1, -2).contiguous()
        biases = bias.reshape(-1, self.n_heads, n, n) if bias is not None else None
        if factors is not None:
            factors = tuple(phi.reshape(-1, *phi.shape[-3:]) for phi in factors)
        rows_per_call = n
        if chunk_size is not None:
            row_bytes = (
                n
                * weight.shape[0]
                * (
                    torch.get_autocast_dtype(pair.device.type).itemsize
                    if torch.is_autocast_enabled(pair.device.type)
                    else pair.element_size()
                )
            )
            rows_per_call = min(n, max(chunk_size, self.chunk_budget_bytes // row_bytes))

        # without autograd the chunks go straight into one output (allocated at the first chunk:
        # its dtype), instead of a list that torch.cat copies: one update [N, N, c_z] alive, not two
        into_one = not torch.is_grad_enabled() and rows_per_call < n
        outs = []
        out: torch.Tensor | None = None
        for b in range(pairs.shape[0]):
            chunks = []
            for start in range(0, n, rows_per_call):
                rows = min(rows_per_call, n - start)
                proj = F.linear(pairs[b].narrow(row_dim, start, rows), weight, proj_bias)
                chunk = self._attend_rows(
                    proj,
                    row_dim,
                    key_mask=row_masks[b].narrow(0, start, rows) if row_masks is not None else None,
                    bias=biases[b][None] if biases is not None else None,
                    factors=(factors[0][b][None], factors[1][b][None]) if factors is not None else None,
                )
                if into_one:
                    if out is None:
                        out = chunk.new_empty((pairs.shape[0], n, n, self.c_z))
                    out[b].narrow(row_dim, start, rows).copy_(chunk)
                else:
                    chunks.append(chunk)
                del proj, chunk
            if not into_one:
                outs.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=row_dim))
        if not into_one:
            out = outs[0] if len(outs) == 1 else torch.stack(outs)
        assert out is not None  # at least one batch element and one chunk
        return out.view(*batch_shape, n, n, self.c_z)

    def _attend_rows(self, proj, row_dim, *, key_mask, bias, factors) -> torch.Tensor:
        """proj: the fused projection [a, c, 4 * H * D] of some rows, in z's orientation (rows
        on ``row_dim``). Returns linear_o(gate * attention) for those pairs, same orientation."""
        # views [a, c, H, D]; unbind (not indexing) so that backward stacks the four gradients
        # into one buffer instead of zero-filling and summing one full-size buffer per slice
        q, k, v, gate = proj.unflatten(-1, (4, self.n_heads, self.head_dim)).unbind(2)
        if row_dim == 1:
            q, k, v, gate = (t.transpose(0, 1) for t in (q, k, v, gate))
        q, k, v, gate = (t.transpose(1, 2) for t in (q, k, v, gate))  # [rows, H, L, D] views
        q_factors, k_factors = factors if factors is not None else (None, None)
        # the op gates (in its epilogue at inference) and writes o in the gate's memory layout,
        # which is z's orientation: the transposes and the flatten below are views
        o = flash_bias_attention(
            q,
            k,
            v,
            q_factors=q_factors,
            k_factors=k_factors,
            bias=bias,
            key_mask=key_mask,
            gate=gate,
            backend=self.backend,
        )
        o = o.transpose(1, 2)  # [rows, L, H, D]
        if row_dim == 1:
            o = o.transpose(0, 1)  # back to z's orientation
        return self.linear_o(o.flatten(-2))
