"""Factor networks: the FlashBias "neural decomposition" of a pair bias.

A pair-biased attention adds ``b[*, h, j, k]`` (a linear projection of the normalised pair
representation) to the logits of query token j and key token k. A factor network replaces that
dense bias by a product of per-token factors::

    b[*, h, j, k]  ~=  phi_q[*, h, j, :] . phi_k[*, h, k, :]        (rank R)

so the attention kernel folds the bias into a second tensor-core product and never reads an
[N, N] tensor. The factors are computed per token from summaries of the *same* normalised pair
rep ``p[*, j, k, c]`` the dense bias is projected from (in the orientation the bias uses):

    query features  f_q[*, j] = masked mean over keys    k of p[*, j, k, :]  (++ s_inputs[*, j])
    key features    f_k[*, k] = masked mean over queries j of p[*, j, k, :]  (++ s_inputs[*, k])
    phi_q = MLP_q(f_q),  phi_k = MLP_k(f_k)        (tanh MLPs, output H * R, split per head)

The paper's AlphaFold 3 preset (``FactorConfig.af3_preset``) uses both pair summaries and the
single input features s_inputs, a width-256 tanh MLP and R = 96.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .common import check_shape, is_count

FactorInit = Literal["xavier", "small"]
# "small" scales the output layers by this, so phi_q phi_k^T starts near zero (about 1e-4 of
# the "xavier" scale) while both sides stay trainable (zero factors would be a saddle point).
SMALL_OUTPUT_GAIN = 1e-2


@dataclass(frozen=True)
class FactorConfig:
    """Architecture of a factor network.

    Attributes:
        rank: R, the rank of the approximation per head.
        width: hidden width of the tanh MLPs.
        depth: number of hidden (Linear + tanh) layers; 0 makes each side one linear map.
        use_s_inputs: concatenate the per-token single input features s_inputs to the pair
            summaries (the modules then require ``s_inputs`` in "lowrank" / "distill" mode).
        c_s_inputs: width of s_inputs; required with use_s_inputs, forbidden without.
        init: "xavier" - Xavier-uniform weights (tanh gain in the hidden layers), zero biases;
            "small" - the same with the output layers scaled by ``SMALL_OUTPUT_GAIN``, so an
            untrained network's bias is close to zero.
    """

    rank: int = 32  # DEFAULT_RANK, the one default of the package (scripts' YAML: 32 too)
    width: int = 256
    depth: int = 2
    use_s_inputs: bool = False
    c_s_inputs: int | None = None
    init: FactorInit = "xavier"

    def __post_init__(self):
        for name, minimum in (("rank", 1), ("width", 1), ("depth", 0)):
            value = getattr(self, name)
            if not is_count(value, minimum):
                raise ValueError(f"FactorConfig needs {name} an int >= {minimum}, got {name}={value!r}")
        if self.use_s_inputs and not is_count(self.c_s_inputs):
            raise ValueError(f"use_s_inputs=True needs c_s_inputs an int >= 1, got c_s_inputs={self.c_s_inputs!r}")
        if not self.use_s_inputs and self.c_s_inputs is not None:
            raise ValueError(f"c_s_inputs={self.c_s_inputs} is given but use_s_inputs=False")
        if self.init not in ("xavier", "small"):
            raise ValueError(f"init must be 'xavier' or 'small', got {self.init!r}")

    @classmethod
    def af3_preset(cls, c_s_inputs: int | None = None) -> FactorConfig:
        """The FlashBias paper's AlphaFold 3 setting: R = 96, tanh MLP of width 256, pair
        summaries plus s_inputs when their width is given (449 in AF3 / Protenix)."""
        return cls(rank=96, width=256, depth=2, use_s_inputs=c_s_inputs is not None, c_s_inputs=c_s_inputs)


DEFAULT_RANK = FactorConfig.rank
# the modules hold their factor networks as ``factor_network``: in a state dict, the factor keys
# are the ones containing this (what conversion adds and stripping removes)
FACTOR_KEY_MARK = ".factor_network."


def factor_config_for(rank: int | None, factor_config: FactorConfig | None) -> FactorConfig:
    """The factor networks' config of a call that takes ``rank`` and / or ``factor_config``
    (``patch_model``, ``convert_checkpoint``): the given config, else ``FactorConfig(rank=rank)``
    (``DEFAULT_RANK`` when neither is given); a rank that disagrees with the config's is an error."""
    if factor_config is not None:
        if rank is not None and factor_config.rank != rank:
            raise ValueError(f"rank={rank} disagrees with factor_config.rank={factor_config.rank}")
        return factor_config
    return FactorConfig(rank=DEFAULT_RANK if rank is None else rank)


def _tanh_mlp(c_in: int, c_out: int, config: FactorConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = c_in
    for _ in range(config.depth):
        layers += [nn.Linear(width_in, config.width), nn.Tanh()]
        width_in = config.width
    layers.append(nn.Linear(width_in, c_out))
    hidden_gain = nn.init.calculate_gain("tanh")
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        is_output = i == len(linears) - 1
        gain = (SMALL_OUTPUT_GAIN if config.init == "small" else 1.0) if is_output else hidden_gain
        nn.init.xavier_uniform_(linear.weight, gain=gain)
        nn.init.zeros_(linear.bias)
    return nn.Sequential(*layers)


def _masked_mean_features(pair: torch.Tensor, pair_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over keys k of pair[*, j, k, :], mean over queries j of pair[*, j, k, :]), each
    [*, N, c], over the entries where pair_mask[*, j, k] is True (all of them for None)."""
    if pair_mask is None:
        pair_mask = torch.ones(pair.shape[:-1], dtype=torch.bool, device=pair.device)
    weights = pair_mask.to(pair.dtype)
    query_sum = torch.einsum("...jk,...jkc->...jc", weights, pair)
    key_sum = torch.einsum("...jk,...jkc->...kc", weights, pair)
    query_count = weights.sum(-1).clamp_min(1.0)[..., None]
    key_count = weights.sum(-2).clamp_min(1.0)[..., None]
    return query_sum / query_count, key_sum / key_count


class FactorNetwork(nn.Module):
    """phi_q, phi_k [*, H, N, R] from a normalised pair rep, with phi_q phi_k^T ~= the bias.

    Two MLPs, ``query_mlp`` and ``key_mlp``, map the per-token features described in the module
    docstring to H * R outputs.
    """

    def __init__(self, c_z: int, n_heads: int, config: FactorConfig):
        super().__init__()
        self.c_z = c_z
        self.n_heads = n_heads
        self.config = config
        c_in = c_z
        if config.use_s_inputs:
            assert config.c_s_inputs is not None  # FactorConfig.__post_init__: use_s_inputs needs it
            c_in += config.c_s_inputs
        self.query_mlp = _tanh_mlp(c_in, n_heads * config.rank, config)
        self.key_mlp = _tanh_mlp(c_in, n_heads * config.rank, config)

    def forward(
        self,
        pair: torch.Tensor,
        pair_mask: torch.Tensor | None = None,
        s_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of the bias ``b[*, h, j, k]`` projected from ``pair[*, j, k, :]``.

        Args:
            pair: [*, N, N, c_z], the normalised pair rep in the bias' orientation (query token
                on dim -3, key token on dim -2); any strides (a transposed view is fine).
            pair_mask: bool [*, N, N] in the same orientation (True = valid) or None.
            s_inputs: [*, N, c_s_inputs] single input features; required iff the config uses
                them, ignored otherwise.

        Returns:
            (phi_q, phi_k), each [*, H, N, R] (strided views), in the MLPs' compute dtype.
        """
        return self.factors_from_features(*self.features(pair, pair_mask, s_inputs))

    def features(
        self,
        pair: torch.Tensor,
        pair_mask: torch.Tensor | None = None,
        s_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLPs' inputs (f_q, f_k), each [*, N, c_z (+ c_s_inputs)]: the masked pair summaries
        (and s_inputs) of the module docstring; arguments as for ``forward``."""
        query_features, key_features = _masked_mean_features(pair, pair_mask)
        if self.config.use_s_inputs:
            if s_inputs is None:
                raise ValueError(
                    "this factor network uses s_inputs (FactorConfig.use_s_inputs=True): pass "
                    f"s_inputs [*, N, {self.config.c_s_inputs}]"
                )
            assert self.config.c_s_inputs is not None  # FactorConfig.__post_init__: use_s_inputs needs it
            check_shape("s_inputs", s_inputs, (*pair.shape[:-2], self.config.c_s_inputs), "[*, N, c_s_inputs]")
            query_features = torch.cat([query_features, s_inputs.to(query_features.dtype)], dim=-1)
            key_features = torch.cat([key_features, s_inputs.to(key_features.dtype)], dim=-1)
        return query_features, key_features

    def factors_from_features(
        self, query_features: torch.Tensor, key_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi_q, phi_k) [*, H, N, R] from the MLP inputs that ``features`` returns."""
        return self._split_heads(self.query_mlp(query_features)), self._split_heads(self.key_mlp(key_features))

    def distill_output(
        self,
        pair: torch.Tensor,
        pair_mask: torch.Tensor | None,
        s_inputs: torch.Tensor | None,
        bias: torch.Tensor,
        defer: bool = False,
    ) -> torch.Tensor | BiasSample:
        """The second output of a module's "distill" mode: ``bias_approximation_loss`` of this
        network's factors against the module's dense ``bias`` [*, H, N, N], or with ``defer``
        the ``BiasSample`` it is computed from (``batched_approximation_losses`` computes many at
        once). Other arguments as for ``forward``."""
        if defer:
            return BiasSample.of(*self.features(pair, pair_mask, s_inputs), bias, pair_mask)
        phi_q, phi_k = self(pair, pair_mask, s_inputs)
        return bias_approximation_loss(phi_q, phi_k, bias, pair_mask)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # [*, N, H * R] -> [*, H, N, R], a view
        return x.unflatten(-1, (self.n_heads, self.config.rank)).transpose(-2, -3)


def bias_approximation_loss(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    bias: torch.Tensor,
    pair_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative squared error of the low-rank bias, for distillation.

    ``loss = mean over batch elements of  sum_{h,j,k} w (phi_q phi_k^T - b)^2 / sum_{h,j,k} w b^2``
    with w = pair_mask[*, j, k] (1 everywhere for None), computed in fp32. Each batch element
    (structure) counts equally; padded pairs do not count.

    Args:
        phi_q, phi_k: [*, H, N, R]. bias: [*, H, N, N]. pair_mask: bool [*, N, N] or None.
    """
    return _relative_squared_errors(phi_q, phi_k, bias, pair_mask).mean()


def _relative_squared_errors(
    phi_q: torch.Tensor, phi_k: torch.Tensor, bias: torch.Tensor, pair_mask: torch.Tensor | None
) -> torch.Tensor:
    """``bias_approximation_loss`` per batch element: [*] (the dims before H)."""
    approx = torch.matmul(phi_q.float(), phi_k.float().transpose(-1, -2))
    target = bias.float()
    squared_error = (approx - target).square()
    squared_target = target.square()
    if pair_mask is not None:
        weights = pair_mask[..., None, :, :].to(torch.float32)
        squared_error = squared_error * weights
        squared_target = squared_target * weights
    return squared_error.sum((-3, -2, -1)) / squared_target.sum((-3, -2, -1)).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class BiasSample:
    """What a factor network is fitted to, from one call of its module: the network's inputs
    f_q, f_k [B, N, c] (``FactorNetwork.features``), the dense bias [B, H, N, N] and the pair mask
    [B, N, N] (bool; None: all valid), the module's batch dims merged into B."""

    query_features: torch.Tensor
    key_features: torch.Tensor
    bias: torch.Tensor
    pair_mask: torch.Tensor | None

    @classmethod
    def of(
        cls,
        query_features: torch.Tensor,
        key_features: torch.Tensor,
        bias: torch.Tensor,
        pair_mask: torch.Tensor | None,
    ) -> BiasSample:
        """A sample from tensors with any batch dims ([*, N, c], [*, H, N, N], [*, N, N])."""
        return cls(
            query_features.reshape(-1, *query_features.shape[-2:]),
            key_features.reshape(-1, *key_features.shape[-2:]),
            bias.reshape(-1, *bias.shape[-3:]),
            None if pair_mask is None else pair_mask.reshape(-1, *pair_mask.shape[-2:]),
        )

    def to(self, device: torch.device | str) -> BiasSample:
        """The same sample on ``device``."""
        mask = None if self.pair_mask is None else self.pair_mask.to(device)
        return BiasSample(self.query_features.to(device), self.key_features.to(device), self.bias.to(device), mask)


# batched_approximation_losses: each fp32 [M, B, H, N, N] temporary of a chunk of networks stays under this
BATCHED_LOSS_CHUNK_BYTES = 1 << 28


def batched_approximation_losses(
    items: Sequence[tuple[FactorNetwork, BiasSample]], chunk_bytes: int = BATCHED_LOSS_CHUNK_BYTES
) -> list[torch.Tensor]:
    """``bias_approximation_loss(*network.factors_from_features(f_q, f_k), bias, pair_mask)`` of
    each (network, sample), computed for the networks of one architecture and sample shape at once:
    their weights stacked, the MLPs as batched products (``torch.baddbmm``), the losses as one
    batched computation. That is a few dozen kernels per group (and chunk) instead of ~70 per
    network, forward and backward alike; fine-tuning's last recycling cycle has 144 networks in the
    base model (benchmarks/session10/). The same values as the per-network loss up to float
    rounding (tests/test_modules.py); gradients reach each network's own parameters."""
    out: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (network, smp) in enumerate(items):
        key = (
            network.config,
            network.n_heads,
            network.c_z,
            tuple(smp.query_features.shape),
            smp.query_features.dtype,
            tuple(smp.bias.shape),
            smp.bias.dtype,
            smp.pair_mask is None,
            smp.bias.device,
        )
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        per_network = 4 * items[members[0]][1].bias.numel()
        size = max(1, chunk_bytes // per_network)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            losses = _group_losses([items[i] for i in chunk])
            for i, loss in zip(chunk, losses.unbind(0)):
                out[i] = loss
    return out  # type: ignore[return-value]  # every index belongs to one group


def _group_losses(items: Sequence[tuple[FactorNetwork, BiasSample]]) -> torch.Tensor:
    """[M] losses of M networks of one architecture on samples of one shape."""
    networks = [network for network, _ in items]
    samples = [smp for _, smp in items]
    first = networks[0]
    phi = []
    for side, features in (("query_mlp", "query_features"), ("key_mlp", "key_features")):
        x = _stacked_mlp([getattr(n, side) for n in networks], torch.stack([getattr(s, features) for s in samples]))
        phi.append(x.unflatten(-1, (first.n_heads, first.config.rank)).transpose(-2, -3))  # [M, B, H, N, R]
    bias = torch.stack([s.bias for s in samples])
    mask = None if samples[0].pair_mask is None else torch.stack([s.pair_mask for s in samples])  # type: ignore[misc]
    return _relative_squared_errors(phi[0], phi[1], bias, mask).mean(-1)


def _stacked_mlp(mlps: Sequence[nn.Sequential], x: torch.Tensor) -> torch.Tensor:
    """M tanh MLPs of one architecture (``_tanh_mlp``) on x [M, B, N, c]: [M, B, N, c_out]."""
    batch = x.shape[1:-1]
    h = x.flatten(1, -2)  # [M, B * N, c]
    for layers in zip(*mlps):
        if isinstance(layers[0], nn.Linear):
            weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)  # [M, in, out]
            if layers[0].bias is None:
                h = torch.bmm(h, weight)
            else:
                h = torch.baddbmm(torch.stack([layer.bias for layer in layers])[:, None, :], h, weight)
        elif isinstance(layers[0], nn.Tanh):
            h = torch.tanh(h)
        else:
            raise TypeError(f"batched_approximation_losses: a {type(layers[0]).__name__} layer in a factor MLP")
    return h.unflatten(1, batch)
