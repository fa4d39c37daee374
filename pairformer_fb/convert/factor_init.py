"""Principled initialisation of factor networks: fit each patched module's FactorNetwork to the
dense bias its host module really adds, on the pair representations the host model produces.

1. ``capture_bias_targets``: run the patched model (every module temporarily in "exact" mode,
   so the model computes the host's function and the pair reps are the host's own) and record,
   at every call of a module with a factor network, the factor network's inputs (the masked
   pair summaries f_q, f_k), the dense bias b [B, H, N, N] and the pair mask.
2. ``fit_factor_network``, per module:

   a. truncated SVD of each recorded bias (masked entries zeroed), per head:
      b[h] ~= U_R S_R V_R^T, targets phi_q* = U_R sqrt(S_R), phi_k* = V_R sqrt(S_R) (the
      singular vectors' signs fixed so that each phi_k* column sums to >= 0). The rank-R SVD
      error is also the floor no rank-R factorisation can beat (``svd_floor``).
   b. ridge least squares of each MLP's output layer (on the hidden features of its current
      hidden layers) against those targets, over every valid token of every sample;
   c. Adam on ``bias_approximation_loss`` over all the network's parameters (``steps``), keeping
      the best parameters seen.

   With held-out samples (``fit_patched_model`` holds out the last calls: by default the last
   fifth, in a conversion every call of its last sample chain), the ridge is chosen and Adam
   stopped early on their error: a few short samples are otherwise fitted almost exactly and
   generalise badly (observed on the tiny Protenix, 2 x 32 tokens: held-out error 100+ with
   ridge 1e-6, 0.3 with 0.1, against 4-8 for the random init).

   The error reported is ``bias_approximation_loss`` (the relative squared error of
   phi_q phi_k^T against b over the valid pairs, each sample counting equally), of the
   network as given (``init_error``), after b (``lstsq_error``) and at the end (``error``), and
   on held-out samples (``heldout_error``, see ``fit_patched_model``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..modules.attention_pair_bias import FlashBiasAttentionPairBias
from ..modules.factor_network import BiasSample, FactorNetwork, bias_approximation_loss
from ..modules.triangle_attention import FlashBiasTriangleAttention
from ..patching.patching import patched_modules


@dataclass
class FitResult:
    """A module's fit (errors: relative squared errors, see the module docstring)."""

    path: str
    kind: str
    rank: int
    n_samples: int
    init_error: float
    lstsq_error: float
    error: float
    svd_floor: float
    heldout_error: float | None
    steps: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def capture_bias_targets(
    model: nn.Module,
    run: Callable[[nn.Module], object],
    *,
    paths: list[str] | None = None,
    device: torch.device | str | None = "cpu",
) -> dict[str, list[BiasSample]]:
    """Run ``run(model)`` on a patched model and record what each factor network is fitted to
    (see the module docstring). ``paths``: the patched modules to record (default: every one
    with a factor network). Every patched module runs in "exact" mode meanwhile; the modes are
    restored afterwards. The records go to ``device`` (None: where they are computed)."""
    wrappers = {p: m for p, m in patched_modules(model).items() if m.flash_bias.factor_network is not None}
    if paths is not None:
        unknown = set(paths) - set(wrappers)
        if unknown:
            raise ValueError(f"no patched module with a factor network at {sorted(unknown)}")
        wrappers = {p: wrappers[p] for p in paths}
    records: dict[str, list[BiasSample]] = {p: [] for p in wrappers}

    def make_hook(path):
        def hook(module, args, kwargs):
            with torch.no_grad():
                if isinstance(module, FlashBiasTriangleAttention):
                    z, mask = args[0], args[1] if len(args) > 1 else kwargs.get("mask")
                    pair, pair_mask, bias = module.bias_target(z, mask)
                elif isinstance(module, FlashBiasAttentionPairBias):
                    s, z, mask = args[0], args[1], args[2] if len(args) > 2 else kwargs.get("mask")
                    pair, pair_mask, bias = module.bias_target(s, z, mask)
                else:
                    raise TypeError(f"{path}: cannot record the bias of a {type(module).__name__}")
                fq, fk = module.factor_network.features(pair, pair_mask)
                sample = BiasSample.of(fq.float(), fk.float(), bias.float(), pair_mask)
                records[path].append(sample.to(device) if device is not None else sample)

        return hook

    modes = {p: w.mode for p, w in patched_modules(model).items()}
    handles = [w.flash_bias.register_forward_pre_hook(make_hook(p), with_kwargs=True) for p, w in wrappers.items()]
    try:
        for w in patched_modules(model).values():
            w.mode = "exact"
        run(model)
    finally:
        for h in handles:
            h.remove()
        for p, w in patched_modules(model).items():
            w.mode = modes[p]
    return records


def approximation_error(network: FactorNetwork, samples: list[BiasSample]) -> torch.Tensor:
    """``bias_approximation_loss`` of the network over the samples, each batch element counting
    equally (a scalar tensor, differentiable)."""
    total: torch.Tensor | None = None
    count = 0
    for smp in samples:
        phi_q, phi_k = network.factors_from_features(smp.query_features, smp.key_features)
        n = smp.bias.shape[0]
        term = bias_approximation_loss(phi_q, phi_k, smp.bias, smp.pair_mask) * n
        total = term if total is None else total + term
        count += n
    if total is None:
        raise ValueError("approximation_error: samples is empty (no recorded bias)")
    return total / count


def _svd_targets(smp: BiasSample, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(phi_q*, phi_k*) [B, N, H * R] from the truncated SVD of the masked bias, and the mean
    relative squared error of the rank-R truncation."""
    b = smp.bias if smp.pair_mask is None else smp.bias * smp.pair_mask[:, None].to(smp.bias.dtype)
    u, s, vh = torch.linalg.svd(b.double())  # [B, H, N, N], [B, H, N], [B, H, N, N]
    r = min(rank, s.shape[-1])
    root = s[..., :r].sqrt()
    tq = u[..., :r] * root[..., None, :]
    tk = vh[..., :r, :].transpose(-1, -2) * root[..., None, :]
    sign = torch.where(tk.sum(-2, keepdim=True) < 0, -1.0, 1.0).to(tk.dtype)
    tq, tk = tq * sign, tk * sign
    if r < rank:
        pad = (0, rank - r)
        tq, tk = torch.nn.functional.pad(tq, pad), torch.nn.functional.pad(tk, pad)
    # per batch element, over all heads (as bias_approximation_loss sums them)
    energy = s.square().sum((-2, -1))
    floor = s[..., r:].square().sum((-2, -1)) / energy.clamp_min(1e-30)
    # [B, H, N, R] -> [B, N, H * R] (the MLP's output layout)
    return (tq.transpose(1, 2).flatten(-2).float(), tk.transpose(1, 2).flatten(-2).float(), float(floor.mean()))


def _lstsq_output_layer(
    mlp: nn.Sequential,
    features: list[torch.Tensor],
    targets: list[torch.Tensor],
    token_masks: list[torch.Tensor],
    ridge: float,
) -> None:
    """Set ``mlp``'s last Linear to the ridge least-squares map from its hidden features to the
    targets, over the valid tokens."""
    hidden_layers, out = mlp[:-1], mlp[-1]
    assert isinstance(out, nn.Linear)  # _tanh_mlp ends with the output Linear
    xs, ys = [], []
    with torch.no_grad():
        for f, t, m in zip(features, targets, token_masks):
            h = hidden_layers(f.to(out.weight.dtype)).double()
            xs.append(torch.cat([h, torch.ones_like(h[..., :1])], -1)[m])
            ys.append(t.double()[m])
        x, y = torch.cat(xs), torch.cat(ys)
        gram = x.T @ x
        gram += (
            ridge * (gram.diagonal().mean() + 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        )
        w = torch.linalg.solve(gram, x.T @ y)  # [hidden + 1, H * R]
        out.weight.copy_(w[:-1].T.to(out.weight.dtype))
        out.bias.copy_(w[-1].to(out.bias.dtype))


def fit_factor_network(
    network: FactorNetwork,
    samples: list[BiasSample],
    *,
    steps: int = 300,
    lr: float = 1e-3,
    ridge: float = 1e-1,
    ridges: tuple[float, ...] = (1e-4, 1e-2, 1e-1, 1.0),
    heldout: list[BiasSample] | None = None,
    path: str = "",
    kind: str = "",
) -> FitResult:
    """Fit ``network`` in place to the recorded biases (see the module docstring); the samples
    are moved to the network's device. ``heldout``: samples not fitted to; with them, the
    least-squares ridge (relative to the Gram matrix's mean diagonal) is chosen among ``ridges``
    and the Adam steps are stopped early by their error, which is reported as
    ``heldout_error``; without them ``ridge`` is used and the training error decides. Returns
    the errors reached (``error``: on ``samples``)."""
    if not samples:
        raise ValueError(f"{path or 'fit_factor_network'}: no recorded bias to fit to")
    start = time.perf_counter()
    param = next(network.parameters())

    def to_device(records):
        return [s.to(param.device) for s in records]

    samples = to_device(samples)
    rank = network.config.rank
    with torch.no_grad():
        init_error = float(approximation_error(network, samples))
    targets = [_svd_targets(s, rank) for s in samples]
    floor = sum(t[2] * s.bias.shape[0] for t, s in zip(targets, samples)) / sum(s.bias.shape[0] for s in samples)
    # a token is valid if it has a valid pair (as query for phi_q, as key for phi_k)
    q_masks = [
        torch.ones(s.bias.shape[0], s.bias.shape[-1], dtype=torch.bool, device=param.device)
        if s.pair_mask is None
        else s.pair_mask.any(-1)
        for s in samples
    ]
    k_masks = [m if s.pair_mask is None else s.pair_mask.any(-2) for m, s in zip(q_masks, samples)]
    heldout = to_device(heldout) if heldout else None

    def score(net) -> float:  # what is minimised: the held-out error if there are held-out samples
        with torch.no_grad():
            return float(approximation_error(net, heldout if heldout else samples))

    before = copy.deepcopy(network.state_dict())
    best_score, best_state, lstsq_error = score(network), before, float("inf")
    for r in ridges if heldout else (ridge,):  # the ridge chosen on the held-out samples
        network.load_state_dict(before)
        _lstsq_output_layer(network.query_mlp, [s.query_features for s in samples], [t[0] for t in targets], q_masks, r)
        _lstsq_output_layer(network.key_mlp, [s.key_features for s in samples], [t[1] for t in targets], k_masks, r)
        current = score(network)
        if current < best_score or lstsq_error == float("inf"):
            with torch.no_grad():
                lstsq_error = float(approximation_error(network, samples))
        if current < best_score:
            best_score, best_state = current, copy.deepcopy(network.state_dict())
    network.load_state_dict(best_state)  # the given init if no least-squares fit beats it

    if steps > 0:  # Adam, keeping the best parameters seen (on the held-out samples if any: early stopping)
        optimiser = torch.optim.Adam(network.parameters(), lr=lr)
        was_training = network.training
        network.train()
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = approximation_error(network, samples)
            current = float(loss.detach()) if not heldout else score(network)
            if current < best_score:
                best_score, best_state = current, copy.deepcopy(network.state_dict())
            loss.backward()
            optimiser.step()
        network.train(was_training)
        current = score(network)
        if current < best_score:
            best_score, best_state = current, copy.deepcopy(network.state_dict())
    network.load_state_dict(best_state)
    with torch.no_grad():
        best_error = float(approximation_error(network, samples))
    heldout_error = score(network) if heldout else None
    return FitResult(
        path=path,
        kind=kind,
        rank=rank,
        n_samples=sum(s.bias.shape[0] for s in samples),
        init_error=init_error,
        lstsq_error=lstsq_error,
        error=best_error,
        svd_floor=floor,
        heldout_error=heldout_error,
        steps=steps,
        seconds=time.perf_counter() - start,
    )


def _check_holdout(holdout) -> None:
    if not isinstance(holdout, bool) and not (isinstance(holdout, float) and 0 < holdout < 1):
        raise ValueError(f"holdout must be true, false or a fraction in (0, 1), got {holdout!r}")


def _held_out_calls(n_calls: int, holdout: bool | float) -> int:
    """How many of a module's last ``n_calls`` recorded calls are held out (see fit_patched_model)."""
    if holdout is False or n_calls < 2:
        return 0
    if holdout is True:
        return max(1, n_calls // 5)
    return min(n_calls - 1, max(1, round(n_calls * holdout)))


def fit_patched_model(
    model: nn.Module,
    run: Callable[[nn.Module], object],
    *,
    steps: int = 300,
    lr: float = 1e-3,
    holdout: bool | float = True,
    progress: bool = True,
) -> list[FitResult]:
    """Capture the biases of every patched module with a factor network (``capture_bias_targets``)
    and fit each (``fit_factor_network``), in model order. With ``holdout`` and at least two
    recorded calls of a module, its last calls are held out of the fit and their error reported
    as ``heldout_error``: a fraction in (0, 1) holds out that share of the calls (rounded, at
    least one; the conversion passes the last sample chain's share, so that every call of that
    chain -- each cut length, each recycling cycle -- is held out), True the last fifth. A
    module that the run never called raises ValueError (its factors would stay random)."""
    from tqdm.auto import tqdm

    _check_holdout(holdout)
    records = capture_bias_targets(model, run)
    uncalled = [p for p, r in records.items() if not r]
    if uncalled:
        raise ValueError(
            f"the sample run never called {len(uncalled)} patched module(s) with a factor network "
            f"(e.g. {uncalled[0]!r}): their factors cannot be fitted; patch fewer stacks or "
            "run the samples through them"
        )
    wrappers = patched_modules(model)
    results = []
    for path in tqdm(list(records), desc="fitting factor networks", disable=not progress):
        w = wrappers[path]
        network = w.flash_bias.factor_network
        assert network is not None  # capture_bias_targets records only the modules with one
        recorded = records.pop(path)
        n_held = _held_out_calls(len(recorded), holdout)
        results.append(
            fit_factor_network(
                network,
                recorded[: len(recorded) - n_held],
                steps=steps,
                lr=lr,
                heldout=recorded[len(recorded) - n_held :] or None,
                path=path,
                kind=w.site_kind + (f" ({w.site_node})" if w.site_node else ""),
            )
        )
    return results


__all__ = [
    "BiasSample",
    "FitResult",
    "approximation_error",
    "capture_bias_targets",
    "fit_factor_network",
    "fit_patched_model",
]
