"""Gated multi-head attention with a *precomputed* additive bias, on the fused FlashBias op: the
attention of a host whose diffusion transformer receives each layer's pair bias already
projected (Boltz-2 computes ``Linear(LN(z))`` for all layers once per trunk pass and hands every
layer its [B, N, N, H] slice). There is no pair representation to normalise or project here: the
module runs the attention, reads the bias shared by the samples with stride 0, and in lowrank
mode replaces the bias by its truncated-SVD factors (computed once while the bias is unchanged).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..kernel import flash_bias_attention, prepare_reused_bias
from ..kernel.op import Backend, check_backend
from .bias_cache import BiasCacheEntry, BiasScope, SVDConfig, SVDFactors, svd_factors
from .common import FlashBiasModule, Mode, check_count, check_features, check_heads, shape_str

PRECOMPUTED_MODES: tuple[str, ...] = ("exact", "lowrank")


class FlashBiasPrecomputedBiasAttention(FlashBiasModule):
    r"""Gated attention with a given pair bias, samples sharing the bias.

    For queries' input s [B*m, Lq, c], keys' input k_in [B*m, Lk, c] (m = ``multiplicity``
    samples per bias, sample-major: rows b*m .. b*m + m - 1 share bias b, as torch's
    ``repeat_interleave(m, 0)`` lays them out), bias [B, Lq, Lk, H] and a key mask [B*m, Lk]::

        q = linear_q(s);  k, v = linear_k(k_in), linear_v(k_in);  g = sigmoid(linear_g(s))
        o[i,h] = softmax_j(q[i,h].k[j,h] / sqrt(D) + bias[i,j,h] - 1e9 (1 - mask[j])) v[j,h]
        out = linear_o(g * o)

    The attention core runs in fp32 with CUDA autocast off (q, k, v and the bias cast to fp32,
    the result cast back to v's dtype), the projections in the caller's precision.

    The bias is never repeated over the samples: per bias b the op runs on the m sample rows with
    a bias of batch 1 (read with stride 0). The head-major contiguous fp32 bias (exact) or its
    SVD factors (lowrank) are cached in ``bias_cache`` and reused while the bias provably has
    not changed: within ``scope`` (an adapter's :class:`BiasScope`) for the scope's generation,
    otherwise while the bias is a view of the very same tensor (same object, version, offset and
    strides). With ``cache_bias=False`` (a bias that is a fresh tensor every call, e.g. already
    repeated by the host) nothing is cached and only exact mode is allowed.

    Modes: "exact"; "lowrank" -- factors of a truncated SVD of the bias (``svd_config``; ranks
    and errors of the last SVD in ``last_svd``). A factor network cannot be used: there is no pair
    representation to feed it.
    """

    def __init__(
        self,
        c_q: int,
        n_heads: int,
        head_dim: int | None = None,
        *,
        c_k: int | None = None,
        q_bias: bool = True,
        k_bias: bool = False,
        v_bias: bool = False,
        gate_bias: bool = False,
        out_bias: bool = False,
        cache_bias: bool = True,
        svd_config: SVDConfig | None = None,
        mode: Mode = "exact",
        backend: Backend = "auto",
    ):
        head_dim = check_heads(n_heads, head_dim, "c_q", c_q)
        check_backend(backend)
        c_k = c_q if c_k is None else c_k
        check_count("c_k", c_k)
        hidden = n_heads * head_dim
        super().__init__()
        self.c_q, self.c_k, self.n_heads, self.head_dim = c_q, c_k, n_heads, head_dim
        self.backend = backend
        self.cache_bias = cache_bias
        self.linear_q = nn.Linear(c_q, hidden, bias=q_bias)
        self.linear_k = nn.Linear(c_k, hidden, bias=k_bias)
        self.linear_v = nn.Linear(c_k, hidden, bias=v_bias)
        self.linear_g = nn.Linear(c_q, hidden, bias=gate_bias)
        self.linear_o = nn.Linear(hidden, c_q, bias=out_bias)
        self.svd_config = svd_config
        self.bias_cache = BiasCacheEntry()
        self.scope: BiasScope | None = None
        self.last_svd: SVDFactors | None = None
        self._warned_inference = False
        self.mode = mode

    def extra_repr(self) -> str:
        return (
            f"c_q={self.c_q}, c_k={self.c_k}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"cache_bias={self.cache_bias}, mode={self.mode!r}"
        )

    def _check_mode(self, mode: str) -> None:
        if mode not in PRECOMPUTED_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(map(repr, PRECOMPUTED_MODES))} for an attention "
                f"with a precomputed bias (no pair representation for a factor network), got {mode!r}"
            )
        if mode == "lowrank" and (getattr(self, "svd_config", None) is None or not getattr(self, "cache_bias", True)):
            raise ValueError(
                "mode 'lowrank' needs svd_config=SVDConfig(...) and cache_bias=True (SVD factors "
                "are worth computing only for a bias reused across calls)"
            )

    # -----------------------------------------------------------------------------------------
    def forward(
        self,
        s: torch.Tensor,
        k_in: torch.Tensor,
        bias: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        multiplicity: int = 1,
    ) -> torch.Tensor:
        """
        Args:
            s: [B*m, Lq, c_q] queries' input.  k_in: [B*m, Lk, c_k] keys' input.
            bias: [B, Lq, Lk, H], shared by the m consecutive samples of each b.
            key_mask: bool [B*m, Lk] (False: masked key), or None.
            multiplicity: m, the samples per bias.

        Returns:
            [B*m, Lq, c_q].
        """
        mode = self.mode
        self._check_mode(mode)
        self._check_inputs(s, k_in, bias, key_mask, multiplicity)
        Bm, Lq = s.shape[:2]
        Lk = k_in.shape[1]
        H, D = self.n_heads, self.head_dim
        q = self.linear_q(s).view(Bm, Lq, H, D)
        k = self.linear_k(k_in).view(Bm, Lk, H, D)
        v = self.linear_v(k_in).view(Bm, Lk, H, D)
        g = torch.sigmoid(self.linear_g(s))
        terms = self._bias_terms(bias, mode)
        with torch.autocast("cuda", enabled=False):
            qh, kh, vh = (t.float().transpose(1, 2) for t in (q, k, v))  # [B*m, H, L, D]
            mask = key_mask
            outs = []
            for b in range(bias.shape[0]):  # one op call per bias: its samples read it with stride 0
                rows = slice(b * multiplicity, (b + 1) * multiplicity)
                kw = (
                    {"q_factors": terms[0][b : b + 1], "k_factors": terms[1][b : b + 1]}
                    if mode == "lowrank"
                    else {"bias": terms[b : b + 1]}
                )
                outs.append(
                    flash_bias_attention(
                        qh[rows],
                        kh[rows],
                        vh[rows],
                        key_mask=None if mask is None else mask[rows],
                        backend=self.backend,
                        **kw,
                    )
                )
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
            o = o.transpose(1, 2).to(v.dtype)
        return self.linear_o(g * o.reshape(Bm, Lq, H * D))

    # -----------------------------------------------------------------------------------------
    def _bias_terms(self, bias: torch.Tensor, mode: str):
        """The head-major contiguous fp32 bias [B, H, Lq, Lk] (exact) or the SVD factors
        (phi_q [B, H, Lq, R], phi_k [B, H, Lk, R]) (lowrank), from the cache when valid."""

        def build():
            dense = bias.permute(0, 3, 1, 2).float().contiguous()
            if mode == "exact":
                # cached: read by every later step and sample as it is
                return prepare_reused_bias(dense) if self.cache_bias and not dense.requires_grad else dense
            trusted = self.bias_cache.trust_inference_tensors or (
                self.scope is not None and self.scope.trust_inference_tensors
            )
            if bias.is_inference() and not trusted and not self._warned_inference:
                self._warned_inference = True
                warnings.warn(
                    "FlashBiasPrecomputedBiasAttention (lowrank): the bias is an inference-mode tensor, "
                    "which has no version counter, so its SVD cannot be proven reusable and is recomputed "
                    "every call; run the diffusion under torch.no_grad() instead of torch.inference_mode() "
                    "(Lightning: Trainer(inference_mode=False)), or patch with "
                    "patch_model(..., trust_inference_tensors=True) (see pairformer_fb.modules.bias_cache), "
                    "to compute it once per trunk pass",
                    RuntimeWarning,
                    stacklevel=4,
                )
            svd = svd_factors(dense, self.svd_config)
            self.last_svd = svd
            return svd.phi_q.contiguous(), svd.phi_k.contiguous()

        if not self.cache_bias:
            return build()
        # the host hands each layer a fresh view (a slice of all layers' biases): key the cache
        # on the tensor it views, and the view's geometry in the signature
        root = bias._base if bias._base is not None else bias
        signature = (
            mode,
            tuple(bias.shape),
            bias.stride(),
            bias.storage_offset(),
            bias.dtype,
            bias.device,
            self.svd_config if mode == "lowrank" else None,
        )
        payload = self.bias_cache.lookup(self.scope, root, signature)
        if payload is not None:
            self.bias_cache.hits += 1
            return payload
        self.bias_cache.misses += 1
        payload = build()
        self.bias_cache.store(self.scope, root, signature, payload)
        return payload

    def _check_inputs(self, s, k_in, bias, key_mask, multiplicity) -> None:
        for name, t in (("s", s), ("k_in", k_in), ("bias", bias)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not isinstance(multiplicity, int) or multiplicity < 1:
            raise ValueError(f"multiplicity must be an int >= 1, got {multiplicity!r}")
        if s.dim() != 3 or s.shape[-1] != self.c_q:
            raise ValueError(f"s must be [B*m, Lq, c_q] with c_q = {self.c_q}, got {shape_str(s.shape)}")
        Bm, Lq = s.shape[:2]
        if k_in.dim() != 3 or k_in.shape[0] != Bm or k_in.shape[-1] != self.c_k:
            raise ValueError(f"k_in must be [B*m, Lk, c_k] = [{Bm}, Lk, {self.c_k}], got {shape_str(k_in.shape)}")
        Lk = k_in.shape[1]
        if Bm % multiplicity:
            raise ValueError(f"s's batch {Bm} is not a multiple of multiplicity = {multiplicity}")
        B = Bm // multiplicity
        expected = (B, Lq, Lk, self.n_heads)
        if tuple(bias.shape) != expected:
            raise ValueError(
                f"bias must be [B, Lq, Lk, H] = {shape_str(expected)} (B = s's batch / multiplicity), "
                f"got {shape_str(bias.shape)}"
            )
        check_features("s", s, self.linear_q.weight)
        check_features("k_in", k_in, self.linear_k.weight)
        if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (Bm, Lk)):
            raise ValueError(
                f"key_mask must be a bool tensor [B*m, Lk] = [{Bm}, {Lk}], got "
                f"{key_mask.dtype} {shape_str(key_mask.shape)}"
            )
