"""Conditioned attention with pair bias (AF3 supplement Algorithm 24 with adaptive layer norm),
as used by the diffusion transformer (every token attends to every token) and by the atom
transformer (local attention: queries in blocks of 32 atoms, keys in windows of 128), on the
fused FlashBias op, with the pair bias computed once and reused across diffusion steps.

The atom transformer's key windows come in two host conventions (``windows=``): "centred"
(Protenix: the atoms padded on both sides, window t = atoms [t*nq - (nk-nq)/2, ... + nk), keys
outside [0, N) masked with -1e10; formed by pad + unfold) and "shifted" (OpenFold3: each window
centred on its block, then shifted to lie inside the element's n_valid = sum(atom_mask) atoms --
right to start at 0 if it underflows, else left to end at n_valid - 1; slots still outside
[0, n_valid), only when n_valid < nk, are invalid; formed by a per-element gather, with the atom
mask of queries x keys applied as ``1e9 * (mask - 1)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import flash_bias_attention, prepare_reused_bias
from ..kernel.adaptive_layer_norm import adaptive_layer_norm
from ..kernel.layer_norm import layer_norm
from ..kernel.op import Backend, check_backend
from .bias_cache import (
    BiasCacheEntry,
    BiasScope,
    SVDConfig,
    SVDFactors,
    param_versions,
    svd_factors,
)
from .common import (
    MODES,
    FlashBiasModule,
    Mode,
    check_count,
    check_features,
    check_heads,
    concat_linear_params,
    head_major_pair_bias,
    shape_str,
)
from .factor_network import FactorConfig, FactorNetwork, bias_approximation_loss

# the additive mask of the hosts' local (trunked) attention: padded keys get -1e10
LOCAL_MASK_INF = 1e10
# the additive mask of OpenFold3's "shifted" windows: inf * (mask_q * mask_k - 1), inf = 1e9
SHIFTED_MASK_INF = 1e9
WINDOWS = ("centred", "shifted")
# the most bytes of normalised pair rep (fp32 or z's dtype) one chunk of a dense bias's
# computation makes (FlashBiasDiffusionAttention._dense_bias); a module attribute for tests
PAIR_CHUNK_BYTES = 1 << 30


def pair_rows_per_chunk(z: torch.Tensor) -> int:
    """Query rows of z [*', N_q, N_k, c] per chunk of the dense bias's computation: at most
    :data:`PAIR_CHUNK_BYTES` of the normalised rows (4 bytes per element at least: the layer
    norm may compute in fp32), at least one row."""
    per_row = math.prod(z.shape[:-3]) * z.shape[-2] * z.shape[-1] * max(z.element_size(), 4)
    return max(1, PAIR_CHUNK_BYTES // max(per_row, 1))


class AdaptiveLayerNorm(nn.Module):
    """AF3 Algorithm 26: ``sigmoid(linear_s(LN_s(s))) * LN_a(a) + linear_nobias_s(LN_s(s))``,
    with LN_a without scale or offset and LN_s with a scale only (the adapters share the host's
    norm parameters, so whatever the host norm has is used)."""

    def __init__(self, c_a: int, c_s: int, eps: float = 1e-5):
        super().__init__()
        self.layer_norm_a = nn.LayerNorm(c_a, eps=eps, elementwise_affine=False)
        self.layer_norm_s = nn.LayerNorm(c_s, eps=eps, bias=False)
        self.linear_s = nn.Linear(c_s, c_a)
        self.linear_nobias_s = nn.Linear(c_s, c_a, bias=False)

    def forward(self, a: torch.Tensor, s: torch.Tensor, *, for_matmul: bool = False) -> torch.Tensor:
        """``for_matmul``: the caller only feeds the result to matmuls (see
        :func:`pairformer_fb.kernel.layer_norm.layer_norm`); at inference on CUDA the whole
        step is then one Triton pass writing the autocast dtype."""
        s = layer_norm(s, self.layer_norm_s, for_matmul=True)
        weight, bias = concat_linear_params([self.linear_s, self.linear_nobias_s])
        gate_shift = F.linear(s, weight, bias)
        fused = adaptive_layer_norm(a, gate_shift, self.layer_norm_a, for_matmul=for_matmul)
        if fused is not None:
            return fused
        gate, shift = gate_shift.chunk(2, dim=-1)
        return torch.sigmoid(gate) * layer_norm(a, self.layer_norm_a) + shift


def trunk_geometry(n: int, n_queries: int, n_keys: int) -> tuple[int, int, int]:
    """(n_trunks, pad_left, pad_right) of the hosts' local attention over n atoms: query blocks
    of n_queries, key windows of n_keys centred on them (the host pads the keys by
    (n_keys - n_queries) / 2 on the left and to whole windows on the right)."""
    if n_keys < n_queries or n_queries % 2 or n_keys % 2:
        raise ValueError(f"local attention needs even n_keys >= n_queries, got n_queries={n_queries}, n_keys={n_keys}")
    n_trunks = math.ceil(n / n_queries)
    pad_left = (n_keys - n_queries) // 2
    pad_right = (n_trunks - 1) * n_queries + n_keys - pad_left - n
    return n_trunks, pad_left, pad_right


def local_key_valid(n: int, n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """bool [n_trunks, n_keys]: whether key slot c of window t is a real atom (position
    t * n_queries - pad_left + c in [0, n))."""
    n_trunks, pad_left, _ = trunk_geometry(n, n_queries, n_keys)
    pos = (
        torch.arange(n_trunks, device=device)[:, None] * n_queries
        - pad_left
        + torch.arange(n_keys, device=device)[None, :]
    )
    return (pos >= 0) & (pos < n)


def shifted_windows(atom_mask: torch.Tensor, n_queries: int, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenFold3's key windows over atom_mask [*, N] (0 / 1 or bool): (index, pair_mask) with
    index [*, n_trunks, n_keys] (long) the atom of key slot c of window t, clamped into
    [0, n_valid) for gathering, and pair_mask [*, n_trunks, n_queries, n_keys] (atom_mask's dtype,
    float for bool) = mask of query (0 beyond N) x mask of key (0 at invalid slots).

    Window t is centred on block t (first slot t*nq + nq/2 - nk/2) and shifted to lie inside
    the element's n_valid = sum(atom_mask) atoms: right to start at 0 if it starts below 0,
    otherwise left to end at n_valid - 1 if it ends beyond; slots outside [0, n_valid) remain
    (n_valid < nk) and are invalid."""
    n_trunks, _, _ = trunk_geometry(atom_mask.shape[-1], n_queries, n_keys)
    mask = atom_mask if atom_mask.is_floating_point() else atom_mask.float()
    device = mask.device
    n_valid = mask.sum(-1, keepdim=True).to(torch.int64)  # [*, 1]
    start = torch.arange(n_trunks, device=device) * n_queries + n_queries // 2 - n_keys // 2  # [T]
    start = start.expand(*mask.shape[:-1], n_trunks)
    end = start + n_keys - 1
    underflow, overflow = (-start).clamp_min(0), (end - (n_valid - 1)).clamp_min(0)
    start = start + torch.where(underflow > 0, underflow, -overflow)
    pos = start[..., None] + torch.arange(n_keys, device=device)  # [*, T, nk]
    invalid = (pos < 0) | (pos >= n_valid[..., None])
    index = torch.minimum(pos, n_valid[..., None] - 1).clamp_min(0)
    mask_k = torch.gather(mask, -1, index.flatten(-2)).unflatten(-1, (n_trunks, n_keys))
    mask_k = mask_k.masked_fill(invalid, 0)
    mask_q = F.pad(mask, (0, n_trunks * n_queries - mask.shape[-1])).unflatten(-1, (n_trunks, n_queries))
    return index, mask_q[..., :, None] * mask_k[..., None, :]


class FlashBiasDiffusionAttention(FlashBiasModule):
    r"""Drop-in conditioned pair-biased attention of the diffusion module.

    For activations a [*, N, c_a], conditioning s [*, N, c_s] and pair rep z::

        x  = AdaLN_a(a, s);   kv = AdaLN_kv(x, s) with cross_attention, else x
        q, g = linear_q(x), linear_g(x);   k, v = linear_k(kv), linear_v(kv)     (H heads of D)
        b[h,i,j] = linear_z(layer_norm_z(z[i,j]))_h
        o[i,h] = softmax_j(q[i,h].k[j,h] / sqrt(D) + b[h,i,j]) v[j,h]
        update[i] = sigmoid(linear_a_last(s[i])) * linear_o(concat_h sigmoid(g[i,h]) * o[i,h])

    Global (diffusion transformer): z is [*, N, N, c_z]; or, with ``efficient_fusion`` (the
    hosts' fused bias), the already normalised z [*, c_z, N, N], and the bias is
    ``(linear_z.weight * layer_norm_z.weight) @ z`` over c_z (layer_norm_z's offset unused).
    With ``pair_layer_norm=False`` there is no layer_norm_z: z arrives normalised (OpenFold3
    normalises it once per transformer) and b = linear_z(z). ``key_mask`` (global attention, a
    token mask [*, N]) masks keys with -1e9, OpenFold3's ``inf * (mask - 1)``.

    Local (atom transformer, ``n_queries`` / ``n_keys`` given): queries in blocks of n_queries
    atoms, each attending to a window of n_keys atoms; z is the trunked pair rep
    [*, n_trunks, n_queries, n_keys, c_z]. ``windows="centred"`` (Protenix): the window centred
    on its block, keys outside [0, N) masked with -1e10. ``windows="shifted"`` (OpenFold3, see
    :func:`shifted_windows`): the window shifted inside each element's valid atoms, gathered per
    element, and ``atom_mask`` [*, N] masks queries x keys with ``1e9 * (mask - 1)``; the key
    indices and the masked bias are cached with the bias. The op runs on batch = the leading
    dims, heads = n_trunks * H, L_q = n_queries, L_k = n_keys: only the trunks' bias tiles
    exist, never an N x N one.

    ``kv_from_input`` (with cross_attention): adaln_kv normalises the input a (OpenFold3's
    ``layer_norm_a_k`` beside ``layer_norm_a_q``) instead of adaln_a's output (Protenix's
    ``layernorm_kv``).

    The bias (exact) or its factors (lowrank) depend only on z: they are computed once and
    reused while z is unchanged (``bias_cache``; within ``scope``, an adapter's
    :class:`BiasScope`, while the diffusion module's fixed inputs are unchanged). A bias whose
    leading dims are all 1 (shared by the samples) is passed to the op with batch 1, read with
    stride 0.

    ``compute_dtype`` (e.g. torch.bfloat16; None: the input's): for a host that runs its
    diffusion without autocast (Protenix's inference runs it in fp32 with TF32 matmuls), the
    module then runs its matmuls and the op under autocast in that dtype and returns the update
    in a's dtype -- the trunk's precision instead of fp32, several times less GPU time per
    call (an opt-in: ``patch_model(..., diffusion_dtype="bf16")``).

    Modes: "exact"; "lowrank" -- factors from ``factor_network`` if there is one, else from a
    truncated SVD of the exact bias (``svd_config``; ranks and errors in ``last_svd``); local
    attention always runs exact (its 32 x 128 tiles plus the window mask are read as a dense
    bias; factors would save nothing); "distill" -- (exact update, bias approximation loss of
    the factor network).
    """

    def __init__(
        self,
        c_a: int = 768,
        c_s: int = 384,
        c_z: int = 128,
        n_heads: int = 16,
        head_dim: int | None = None,
        *,
        cross_attention: bool = False,
        q_bias: bool = True,
        k_bias: bool = False,
        v_bias: bool = False,
        gate_bias: bool = False,
        out_bias: bool = False,
        layer_norm_eps: float = 1e-5,
        pair_layer_norm: bool = True,
        kv_from_input: bool = False,
        windows: str = "centred",
        factor_config: FactorConfig | None = None,
        svd_config: SVDConfig | None = None,
        mode: Mode = "exact",
        backend: Backend = "auto",
        compute_dtype: torch.dtype | None = None,
    ):
        check_count("c_s", c_s)
        check_count("c_z", c_z)
        head_dim = check_heads(n_heads, head_dim, "c_a", c_a)
        check_backend(backend)
        hidden = n_heads * head_dim
        if compute_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"compute_dtype must be None, torch.bfloat16 or torch.float16, got {compute_dtype!r}")
        if windows not in WINDOWS:
            raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
        if kv_from_input and not cross_attention:
            raise ValueError("kv_from_input needs cross_attention=True (it chooses adaln_kv's input)")
        super().__init__()
        self.c_a, self.c_s, self.c_z, self.n_heads, self.head_dim = c_a, c_s, c_z, n_heads, head_dim
        self.cross_attention = cross_attention
        self.kv_from_input = kv_from_input
        self.windows = windows
        self.backend = backend
        self.compute_dtype = compute_dtype
        self.adaln_a = AdaptiveLayerNorm(c_a, c_s, layer_norm_eps)
        self.adaln_kv = AdaptiveLayerNorm(c_a, c_s, layer_norm_eps) if cross_attention else None
        # pair_layer_norm=False: z comes normalised (OpenFold3 normalises it once per transformer)
        self.layer_norm_z = nn.LayerNorm(c_z, eps=layer_norm_eps) if pair_layer_norm else None
        self.linear_z = nn.Linear(c_z, n_heads, bias=False)
        self.linear_q = nn.Linear(c_a, hidden, bias=q_bias)
        self.linear_k = nn.Linear(c_a, hidden, bias=k_bias)
        self.linear_v = nn.Linear(c_a, hidden, bias=v_bias)
        self.linear_g = nn.Linear(c_a, hidden, bias=gate_bias)
        self.linear_o = nn.Linear(hidden, c_a, bias=out_bias)
        self.linear_a_last = nn.Linear(c_s, c_a)
        self.factor_network = FactorNetwork(c_z, n_heads, factor_config) if factor_config is not None else None
        self.svd_config = svd_config
        self.bias_cache = BiasCacheEntry()
        self.scope: BiasScope | None = None
        self.last_svd: SVDFactors | None = None
        self.mode = mode

    def extra_repr(self) -> str:
        return (
            f"c_a={self.c_a}, c_s={self.c_s}, c_z={self.c_z}, n_heads={self.n_heads}, "
            f"head_dim={self.head_dim}, cross_attention={self.cross_attention}, "
            f"kv_from_input={self.kv_from_input}, windows={self.windows!r}, mode={self.mode!r}"
        )

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if mode == "distill" and self.factor_network is None:
            raise ValueError(
                "mode 'distill' needs a factor network: construct FlashBiasDiffusionAttention "
                "with factor_config=FactorConfig(...)"
            )
        if mode == "lowrank" and self.factor_network is None and getattr(self, "svd_config", None) is None:
            raise ValueError("mode 'lowrank' needs a factor network (factor_config=...) or svd_config=SVDConfig(...)")

    # -----------------------------------------------------------------------------------------
    def forward(
        self,
        a: torch.Tensor,
        s: torch.Tensor,
        z: torch.Tensor,
        *,
        n_queries: int | None = None,
        n_keys: int | None = None,
        efficient_fusion: bool = False,
        key_mask: torch.Tensor | None = None,
        atom_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            a: [*, N, c_a] activations. s: [*, N, c_s] conditioning (broadcastable batch dims).
            z: [*', N, N, c_z] pair rep (global), [*', c_z, N, N] normalised (global with
                efficient_fusion) or [*', n_trunks, n_queries, n_keys, c_z] (local); *' is
                broadcastable to *, typically all 1 (shared by the samples).
            n_queries, n_keys: local attention windows (both or neither).
            efficient_fusion: the global bias from a normalised, channel-first z.
            key_mask: [*, N] token mask (global attention only), bool or 0 / 1 (broadcastable
                batch dims): a zero masks that key with -1e9 (OpenFold3's ``inf * (mask - 1)``).
            atom_mask: [*, N] atom mask of local attention with ``windows="shifted"`` (None: all
                valid), bool or 0 / 1, broadcastable batch dims: places the windows and masks
                queries x keys with -1e9.

        Returns:
            the update [*, N, c_a] in a's dtype; in "distill" mode (update, bias approximation
            loss), the loss None with local attention (which runs exact: no factors to fit).
        """
        if (
            self.compute_dtype is not None
            and a.dtype != self.compute_dtype
            and a.is_floating_point()
            and not torch.is_autocast_enabled(a.device.type)
        ):
            # an fp32 host step (Protenix's diffusion skips AMP): matmuls and the op in
            # compute_dtype under autocast, the update returned in a's dtype
            with torch.autocast(a.device.type, dtype=self.compute_dtype):
                res = self.forward(
                    a,
                    s,
                    z,
                    n_queries=n_queries,
                    n_keys=n_keys,
                    efficient_fusion=efficient_fusion,
                    key_mask=key_mask,
                    atom_mask=atom_mask,
                )
            if isinstance(res, tuple):
                return res[0].to(a.dtype), res[1]
            return res.to(a.dtype)
        mode = self.mode
        self._check_mode(mode)
        local = bool(n_queries and n_keys)
        if local and efficient_fusion:
            raise ValueError("efficient_fusion applies to global attention only (n_queries / n_keys were given)")
        self._check_inputs(a, s, z, local, efficient_fusion, n_queries, n_keys)
        if key_mask is not None:
            if local:
                raise ValueError("key_mask applies to global attention only (n_queries / n_keys were given)")
            _check_mask("key_mask", key_mask, a)
        if atom_mask is not None:
            if not (local and self.windows == "shifted"):
                raise ValueError("atom_mask applies to local attention with windows='shifted' only")
            _check_mask("atom_mask", atom_mask, a)
        # x is read by the projections only, unless adaln_kv normalises it again
        x = self.adaln_a(a, s, for_matmul=self.adaln_kv is None or self.kv_from_input)
        if self.adaln_kv is None:
            kv = x
        else:
            kv = self.adaln_kv(a if self.kv_from_input else x, s, for_matmul=True)
        q, k, v, gate = self._project(x, kv)  # [*, N, H, D] each
        if local:
            gated, loss = torch.sigmoid(gate) * self._local(q, k, v, z, n_queries, n_keys, atom_mask), None
        else:
            gated, loss = self._global(q, k, v, gate, z, efficient_fusion, mode, key_mask)
        update = self.linear_o(gated.flatten(-2))
        update = torch.sigmoid(self.linear_a_last(s)) * update
        return (update, loss) if mode == "distill" else update

    def _project(self, x, kv):
        H, D = self.n_heads, self.head_dim
        if kv is x:
            weight, bias = concat_linear_params([self.linear_q, self.linear_k, self.linear_v, self.linear_g])
            return F.linear(x, weight, bias).unflatten(-1, (4, H, D)).unbind(-3)
        wq, bq = concat_linear_params([self.linear_q, self.linear_g])
        wk, bk = concat_linear_params([self.linear_k, self.linear_v])
        q, g = F.linear(x, wq, bq).unflatten(-1, (2, H, D)).unbind(-3)
        k, v = F.linear(kv, wk, bk).unflatten(-1, (2, H, D)).unbind(-3)
        return q, k, v, g

    # -----------------------------------------------------------------------------------------
    # pair terms: computed once per z (cached)

    def _bias_params(self):
        norm = self.layer_norm_z
        params = [None if norm is None else norm.weight, None if norm is None else norm.bias, self.linear_z.weight]
        if self.factor_network is not None:
            params += list(self.factor_network.parameters())
        return params

    def _pair_terms(self, z, dtype, key: tuple, build, extra: tuple = ()):
        """The cached terms built from z (and the ``extra`` tensors, e.g. an atom mask), or
        ``build()`` fresh."""
        signature = (
            key,
            tuple(z.shape),
            z.dtype,
            z.device,
            dtype,
            self.svd_config,
            param_versions(self._bias_params()),
            tuple((tuple(t.shape), t.dtype, t.device) for t in extra),
        )
        payload = self.bias_cache.lookup(self.scope, (z, *extra), signature)
        if payload is not None:
            self.bias_cache.hits += 1
            return payload
        self.bias_cache.misses += 1
        payload = build()
        self.bias_cache.store(self.scope, (z, *extra), signature, payload)
        return payload

    def _dense_bias(self, z, efficient_fusion):
        """[*', H, N, N] in the compute dtype of the host's projection. Without
        efficient_fusion the normalised z (an [*', rows, N, c_z] intermediate in z's dtype, or
        fp32) is made for :data:`PAIR_CHUNK_BYTES` worth of query rows at a time: at 5,120
        tokens and c_z = 128 the whole of it would be 13 GB in fp32 beside the bias. The rows
        per chunk depend only on the shapes, so a recomputed bias is bit-identical to a cached
        one (bias_cache's memory bound)."""
        if efficient_fusion:
            norm_weight = getattr(self.layer_norm_z, "weight", None)
            w = self.linear_z.weight * norm_weight[None, :] if norm_weight is not None else self.linear_z.weight
            n = z.shape[-1]
            return torch.matmul(w, z.flatten(-2)).unflatten(-1, (n, n))
        rows = pair_rows_per_chunk(z)
        n = z.shape[-2]
        if rows >= z.shape[-3]:
            return head_major_pair_bias(self._norm_z(z), self.linear_z)
        out = None
        for i in range(0, z.shape[-3], rows):
            part = head_major_pair_bias(self._norm_z(z[..., i : i + rows, :, :]), self.linear_z)  # [*', H, r, N]
            if out is None:
                out = part.new_empty(*part.shape[:-2], z.shape[-3], n)
            out[..., i : i + rows, :] = part
            del part
        return out

    def _norm_z(self, z):
        return z if self.layer_norm_z is None else layer_norm(z, self.layer_norm_z)

    def _normalised_pair(self, z, efficient_fusion):
        """layer_norm_z(z) in [*', N, N, c_z] (for the factor network)."""
        if efficient_fusion:
            pair = z.movedim(-3, -1)
            if getattr(self.layer_norm_z, "weight", None) is not None:
                pair = pair * self.layer_norm_z.weight
            return pair
        return self._norm_z(z)

    def _global(self, q, k, v, gate, z, efficient_fusion, mode, key_mask=None):
        """sigmoid(gate) * attention, [*, N, H, D] (the op gates in its epilogue at inference)."""
        batch_shape, n = q.shape[:-3], q.shape[-3]
        H, D = self.n_heads, self.head_dim
        use_factors = mode == "lowrank"
        use_network = self.factor_network is not None and mode in ("lowrank", "distill")

        def build():
            terms = {}
            if mode in ("exact", "distill") or (use_factors and not use_network):
                terms["bias"] = self._dense_bias(z, efficient_fusion)
            if use_network:
                pair = self._normalised_pair(z, efficient_fusion)
                terms["phi_q"], terms["phi_k"] = self.factor_network(pair, None, None)
            elif use_factors:
                svd = svd_factors(terms.pop("bias"), self.svd_config)
                self.last_svd = svd
                terms["phi_q"], terms["phi_k"] = svd.phi_q, svd.phi_k
            terms = {name: t.to(q.dtype) if name == "bias" or mode == "lowrank" else t for name, t in terms.items()}
            if "bias" in terms and not terms["bias"].requires_grad:  # read by every later step as it is
                terms["bias"] = prepare_reused_bias(terms["bias"])
            return terms

        terms = self._pair_terms(z, q.dtype, ("global", mode, efficient_fusion, use_network), build)
        B = math.prod(batch_shape)
        qh, kh, vh, gh = (t.reshape(B, n, H, D).transpose(1, 2) for t in (q, k, v, gate))  # [B, H, N, D]
        bias = phi_q = phi_k = None
        if mode == "lowrank":
            phi_q = _batch_to(terms["phi_q"], batch_shape, 3)
            phi_k = _batch_to(terms["phi_k"], batch_shape, 3)
        else:
            bias = _batch_to(terms["bias"], batch_shape, 3)
        if key_mask is not None:  # [*, N] -> bool [B, N]
            key_mask = (key_mask != 0).expand(*batch_shape, n).reshape(B, n)
        o = flash_bias_attention(
            qh, kh, vh, q_factors=phi_q, k_factors=phi_k, bias=bias, key_mask=key_mask, gate=gh, backend=self.backend
        )
        o = o.transpose(1, 2).reshape(*batch_shape, n, H, D)  # o has the gate's memory order: a view
        loss = None
        if mode == "distill":
            loss = bias_approximation_loss(terms["phi_q"], terms["phi_k"], terms["bias"])
        return o, loss

    def _local(self, q, k, v, z, n_queries, n_keys, atom_mask=None):
        batch_shape, n = q.shape[:-3], q.shape[-3]
        H, D = self.n_heads, self.head_dim
        T, pad_left, pad_right = trunk_geometry(n, n_queries, n_keys)
        shifted = self.windows == "shifted"

        def build():
            pair = self._norm_z(z)  # [*', T, nq, nk, c]
            zb = pair.shape[:-4]
            flat = pair.reshape(*zb, T, n_queries * n_keys, self.c_z)
            bias = torch.matmul(self.linear_z.weight, flat.transpose(-1, -2))  # [*', T, H, nq * nk]
            bias = bias.unflatten(-1, (n_queries, n_keys))  # [*', T, H, nq, nk]
            terms = {}
            if shifted:
                # the host's order of terms: linear_z(z) and inf * (mask_q * mask_k - 1)
                mask = atom_mask if atom_mask is not None else torch.ones(n, device=bias.device, dtype=bias.dtype)
                index, pair_mask = shifted_windows(mask, n_queries, n_keys)
                bias = bias + (SHIFTED_MASK_INF * (pair_mask - 1)).to(bias.dtype)[..., :, None, :, :]
                terms["key_index"] = index  # [*m, T, nk]
            else:
                valid = local_key_valid(n, n_queries, n_keys, device=bias.device)
                bias = bias + (-LOCAL_MASK_INF) * (~valid).to(bias.dtype)[:, None, None, :]
            terms["bias"] = bias.to(q.dtype).flatten(-4, -3)  # [*', T * H, nq, nk]
            return terms

        key = ("local", self.windows, n, n_queries, n_keys)
        extra = (atom_mask,) if shifted and atom_mask is not None else ()
        terms = self._pair_terms(z, q.dtype, (*key, len(extra)), build, extra=extra)
        B = math.prod(batch_shape)
        q = F.pad(q.reshape(B, n, H, D), (0, 0, 0, 0, 0, T * n_queries - n))
        qt = q.unflatten(1, (T, n_queries)).permute(0, 1, 3, 2, 4).reshape(B, T * H, n_queries, D)

        if shifted:
            # per element b, window t, slot c: atom index[b, t, c] (one gather over the flat atoms)
            index = terms["key_index"]
            index = index.expand(*batch_shape, T, n_keys).reshape(B, T * n_keys)
            flat_index = (index + n * torch.arange(B, device=index.device)[:, None]).flatten()

            def windows(t):
                t = t.reshape(B * n, H, D).index_select(0, flat_index)  # [B * T * nk, H, D]
                return t.reshape(B, T, n_keys, H, D).permute(0, 1, 3, 2, 4).reshape(B, T * H, n_keys, D)
        else:

            def windows(t):
                t = F.pad(t.reshape(B, n, H, D), (0, 0, 0, 0, pad_left, pad_right))
                # unfold: [B, T, H, D, nk] (overlapping windows), then one copy into the op's layout
                return t.unfold(1, n_keys, n_queries).permute(0, 1, 2, 4, 3).reshape(B, T * H, n_keys, D)

        bias = _batch_to(terms["bias"], batch_shape, 3)
        o = flash_bias_attention(qt, windows(k), windows(v), bias=bias, backend=self.backend)
        o = o.reshape(B, T, H, n_queries, D).permute(0, 1, 3, 2, 4).reshape(B, T * n_queries, H, D)[:, :n]
        return o.reshape(*batch_shape, n, H, D)

    # -----------------------------------------------------------------------------------------
    def _check_inputs(self, a, s, z, local, efficient_fusion, n_queries, n_keys) -> None:
        for name, t in (("a", a), ("s", s), ("z", z)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if a.dim() < 2 or a.shape[-1] != self.c_a:
            raise ValueError(f"a must be [*, N, c_a] with c_a = {self.c_a}, got {shape_str(a.shape)}")
        n = a.shape[-2]
        if s.dim() < 2 or s.shape[-1] != self.c_s or s.shape[-2] != n:
            raise ValueError(f"s must be [*, N, c_s] = [*, {n}, {self.c_s}] (N from a), got {shape_str(s.shape)}")
        if (n_queries is None) != (n_keys is None) or (n_queries is not None and bool(n_queries) != bool(n_keys)):
            raise ValueError(f"n_queries and n_keys must be given together, got {n_queries}, {n_keys}")
        batch_nd = a.dim() - 2
        tail: tuple[int, ...]
        if local:
            T = math.ceil(n / n_queries)
            tail, layout = (T, n_queries, n_keys, self.c_z), "[*, n_trunks, n_queries, n_keys, c_z]"
        elif efficient_fusion:
            tail, layout = (self.c_z, n, n), "[*, c_z, N, N] (efficient_fusion)"
        else:
            tail, layout = (n, n, self.c_z), "[*, N, N, c_z]"
        zb = tuple(z.shape[: z.dim() - len(tail)])
        if (
            tuple(z.shape[z.dim() - len(tail) :]) != tail
            or len(zb) != batch_nd
            or any(d not in (1, b) for d, b in zip(zb, a.shape[:-2]))
        ):
            raise ValueError(
                f"z must be {layout} = {shape_str((*zb[:batch_nd], *tail))} with batch dims "
                f"broadcastable to a's {shape_str(a.shape[:-2])}, got {shape_str(z.shape)}"
            )
        check_features("a", a, self.linear_q.weight)
        check_features("s", s, self.linear_a_last.weight)
        check_features("z", z, self.linear_z.weight)


def _check_mask(name: str, mask, a: torch.Tensor) -> None:
    """A [*, N] mask with N from a and batch dims broadcastable to a's, else a ValueError naming it."""
    if (
        isinstance(mask, torch.Tensor)
        and mask.dim() >= 1
        and mask.shape[-1] == a.shape[-2]
        and _broadcasts_to(mask.shape[:-1], a.shape[:-2])
    ):
        return
    got = shape_str(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
    raise ValueError(
        f"{name} must be [*, N] with N = {a.shape[-2]} and batch dims broadcastable to a's "
        f"{shape_str(a.shape[:-2])}, got {got}"
    )


def _broadcasts_to(shape, target) -> bool:
    """Whether ``shape`` broadcasts to ``target`` (without changing it)."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def _batch_to(t: torch.Tensor, batch_shape, n_tail: int) -> torch.Tensor:
    """t [*', ...tail] with *' broadcastable to batch_shape -> [1 or B, ...tail]: batch 1 (read
    with stride 0 by the op) when *' is all ones, a view when *' equals batch_shape, otherwise
    an expanded copy."""
    zb, tail = t.shape[: t.dim() - n_tail], t.shape[t.dim() - n_tail :]
    if math.prod(zb) == 1:
        return t.reshape(1, *tail)
    if tuple(zb) != tuple(batch_shape):
        t = t.expand(*batch_shape, *tail)
    return t.reshape(-1, *tail)
