"""Single attention with pair bias (AF3 supplement Algorithm 24, as used in the Pairformer:
no conditioning) on the fused FlashBias op."""

from __future__ import annotations

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


class FlashBiasAttentionPairBias(FlashBiasModule):
    r"""Drop-in pair-biased single attention of the Pairformer.

    For single rep s [*, N, c_s], pair rep z [*, N, N, c_z] and token mask [*, N]::

        a = layer_norm_s(s)                 (skipped with layer_norm_s=False, e.g. Boltz, whose
                                             pre-norm sits outside the attention module)
        q[i,h] = linear_q(a[i]),  k[i,h] = linear_k(a[i]),  v[i,h] = linear_v(a[i])
        b[h,i,j] = linear_z(layer_norm_z(z[i,j]))_h
        logits[h,i,j] = q[i,h].k[j,h] / sqrt(D) + b[h,i,j] + 1e9 (mask[j] - 1)
        o[i,h] = sum_j softmax_j(logits[h,i,:]) v[j,h]
        update[i] = linear_o(concat_h sigmoid(linear_g(a[i]))_h * o[i,h])

    The caller adds the residual. The factor network sees layer_norm_z(z) with query token i
    on dim -3 and key token j on dim -2, the orientation of b, and the pair mask
    mask[i] & mask[j].

    Parameters: ``layer_norm_s`` (absent with layer_norm_s=False), ``layer_norm_z``,
    ``linear_z`` (c_z -> H, no bias), ``linear_q``, ``linear_k``, ``linear_v``, ``linear_g``
    (c_s -> H*D), ``linear_o`` (H*D -> c_s), and ``factor_network`` with a ``factor_config``.

    Args:
        c_s, c_z: single and pair channels. n_heads: H.
        head_dim: D (<= 128); None means c_s // n_heads (AF3: 384 / 16 = 24).
        layer_norm_s: whether the module owns the pre-norm of s.
        q_bias, k_bias, v_bias, gate_bias, out_bias: whether linear_q / _k / _v / _g / _o have a
            bias term (defaults: Algorithm 24, a bias on the query projection only).
        layer_norm_eps: epsilon of the layer norms.
        factor_config, mode, backend: as for ``FlashBiasTriangleAttention``.
    """

    def __init__(
        self,
        c_s: int = 384,
        c_z: int = 128,
        n_heads: int = 16,
        head_dim: int | None = None,
        *,
        layer_norm_s: bool = True,
        q_bias: bool = True,
        k_bias: bool = False,
        v_bias: bool = False,
        gate_bias: bool = False,
        out_bias: bool = False,
        layer_norm_eps: float = 1e-5,
        factor_config: FactorConfig | None = None,
        mode: Mode = "exact",
        backend: Backend = "auto",
    ):
        check_count("c_z", c_z)
        head_dim = check_heads(n_heads, head_dim, "c_s", c_s)
        check_backend(backend)
        hidden = n_heads * head_dim
        super().__init__()
        self.c_s, self.c_z, self.n_heads, self.head_dim = c_s, c_z, n_heads, head_dim
        self.backend = backend
        self.layer_norm_s = nn.LayerNorm(c_s, eps=layer_norm_eps) if layer_norm_s else None
        self.layer_norm_z = nn.LayerNorm(c_z, eps=layer_norm_eps)
        self.linear_z = nn.Linear(c_z, n_heads, bias=False)
        self.linear_q = nn.Linear(c_s, hidden, bias=q_bias)
        self.linear_k = nn.Linear(c_s, hidden, bias=k_bias)
        self.linear_v = nn.Linear(c_s, hidden, bias=v_bias)
        self.linear_g = nn.Linear(c_s, hidden, bias=gate_bias)
        self.linear_o = nn.Linear(hidden, c_s, bias=out_bias)
        self.factor_network = FactorNetwork(c_z, n_heads, factor_config) if factor_config is not None else None
        self.mode = mode

    def extra_repr(self) -> str:
        return f"c_s={self.c_s}, c_z={self.c_z}, n_heads={self.n_heads}, head_dim={self.head_dim}, mode={self.mode!r}"

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        s_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | BiasSample]:
        """
        Args:
            s: [*, N, c_s] single representation.
            z: [*, N, N, c_z] pair representation.
            mask: [*, N] token mask (bool or 0/1), or None for no masking.
            s_inputs: [*, N, c_s_inputs] single input features, for a factor network that uses
                them ("lowrank" / "distill" only; ignored otherwise).

        Returns:
            the update [*, N, c_s]; in "distill" mode (update, bias approximation loss), or
            (update, BiasSample) with ``defer_distill_loss``.
        """
        mode = self.mode
        self._check_mode(mode)
        self._check_inputs(s, z, mask)
        batch_shape, n = s.shape[:-2], s.shape[-2]
        a = layer_norm(s, self.layer_norm_s, for_matmul=True) if self.layer_norm_s is not None else s
        pair = layer_norm(z, self.layer_norm_z, for_matmul=True)
        token_mask = mask.to(torch.bool) if mask is not None else None
        pair_mask = token_mask[..., :, None] & token_mask[..., None, :] if token_mask is not None else None

        bias: torch.Tensor | None = None
        phi_q: torch.Tensor | None = None
        phi_k: torch.Tensor | None = None
        if mode in ("exact", "distill"):
            bias = head_major_pair_bias(pair, self.linear_z)  # [*, H, N, N]
        if mode == "lowrank":
            assert self.factor_network is not None  # _check_mode: this mode needs one
            phi_q, phi_k = self.factor_network(pair, pair_mask, s_inputs)

        weight, proj_bias = concat_linear_params([self.linear_q, self.linear_k, self.linear_v, self.linear_g])
        # views [B, N, H, D]; unbind (not indexing): backward stacks the gradients into one buffer
        q, k, v, gate = F.linear(a, weight, proj_bias).reshape(-1, n, 4, self.n_heads, self.head_dim).unbind(2)
        q, k, v, gate = (t.transpose(1, 2) for t in (q, k, v, gate))  # [B, H, N, D] views
        q_factors = k_factors = None
        if mode == "lowrank":
            assert phi_q is not None and phi_k is not None  # computed above in "lowrank" mode
            q_factors, k_factors = (phi.reshape(-1, *phi.shape[-3:]) for phi in (phi_q, phi_k))
        o = flash_bias_attention(
            q,
            k,
            v,
            q_factors=q_factors,
            k_factors=k_factors,
            bias=bias.reshape(-1, self.n_heads, n, n) if bias is not None else None,  # None in "lowrank" only
            key_mask=token_mask.reshape(-1, n) if token_mask is not None else None,
            gate=gate,
            backend=self.backend,
        )
        # gated o comes in the gate's layout ([B, N, H, D] in memory): the flatten is a view
        update = self.linear_o(o.transpose(1, 2).flatten(-2)).view(*batch_shape, n, self.c_s)
        if mode == "distill":
            assert self.factor_network is not None and bias is not None  # _check_mode; computed above
            return update, self.factor_network.distill_output(pair, pair_mask, s_inputs, bias, self.defer_distill_loss)
        return update

    def bias_target(self, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None):
        """What a factor network is fitted to: ``(pair, pair_mask, bias)``, layer_norm_z(z)
        [*, N, N, c_z], the pair mask mask[i] & mask[j] [*, N, N] (or None) and the dense bias
        [*, H, N, N] (``bias_approximation_loss(*factor_network(pair, pair_mask), bias,
        pair_mask)`` is the "distill" mode's loss). Arguments as for ``forward``."""
        self._check_inputs(s, z, mask)
        pair = layer_norm(z, self.layer_norm_z)
        token_mask = mask.to(torch.bool) if mask is not None else None
        pair_mask = token_mask[..., :, None] & token_mask[..., None, :] if token_mask is not None else None
        return pair, pair_mask, head_major_pair_bias(pair, self.linear_z)

    def _check_inputs(self, s, z, mask) -> None:
        for name, t in (("s", s), ("z", z)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if s.dim() < 2 or s.shape[-1] != self.c_s:
            raise ValueError(f"s must be [*, N, c_s] with c_s = {self.c_s}, got {shape_str(s.shape)}")
        batch_shape, n = tuple(s.shape[:-2]), s.shape[-2]
        check_shape("z", z, (*batch_shape, n, n, self.c_z), "[*, N, N, c_z] (* and N from s)")
        check_features("s", s, self.linear_q.weight)
        check_features("z", z, self.linear_z.weight)
        if mask is not None:
            check_shape("mask", mask, (*batch_shape, n), "[*, N] (s's shape without c_s)")
