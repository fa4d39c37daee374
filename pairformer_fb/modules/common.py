"""Pieces shared by the FlashBias modules: the mode switch, input validation and the projections."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal, Sequence, cast, get_args

import torch
from torch import nn

from ..kernel.op import MAX_HEAD_DIM

if TYPE_CHECKING:
    from .factor_network import FactorNetwork

Mode = Literal["exact", "lowrank", "distill"]
MODES: tuple[str, ...] = get_args(Mode)


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], layout: str) -> None:
    """Raise a ValueError naming ``name``, its layout and the expected shape unless t has it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must be {layout} = {shape_str(expected)}, got {shape_str(t.shape)}")


def check_features(name: str, t: torch.Tensor, param: torch.Tensor) -> None:
    """One line naming ``name`` unless t is a non-empty floating-point tensor on the device of
    the module's parameter ``param`` and of its dtype (any floating dtype under autocast on t's
    device type, which casts for the products): the checks the projections would otherwise fail
    deep inside torch."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} has shape {shape_str(t.shape)}: every dimension must be >= 1")
    if t.device != param.device:
        raise ValueError(f"{name} is on {t.device}, the module's parameters on {param.device}: move one to the other")
    if t.dtype != param.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(
            f"{name} has dtype {t.dtype}, the module's parameters {param.dtype}: cast one to the other, "
            "or run under torch.autocast"
        )


def check_count(name: str, value, minimum: int = 1) -> None:
    """One line naming a constructor's size argument unless it is an int >= minimum."""
    if not is_count(value, minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def is_count(value, minimum: int = 1) -> bool:
    """Whether value is an integer (Python's or numpy's, not a bool) >= minimum."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum


def check_heads(n_heads, head_dim, width_name: str = "", width: int = 0) -> int:
    """A constructor's n_heads and head_dim checked, and the input width ``width_name`` when given;
    head_dim None: that width // n_heads, which must divide. Returns the head dim."""
    if width_name:
        check_count(width_name, width)
    check_count("n_heads", n_heads)
    if head_dim is None:
        if width % n_heads:
            raise ValueError(f"{width_name} = {width} is not divisible by n_heads = {n_heads}: give head_dim")
        head_dim = width // n_heads
    check_count("head_dim", head_dim)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be <= {MAX_HEAD_DIM} (the kernels' widest), got {head_dim}")
    return head_dim


def concat_linear_params(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the linear maps stacked along the output, for one fused matmul
    (the modules keep them separate so host checkpoints map onto them one to one). A map
    without a bias contributes zeros; None when no map has one.

    Without gradients to track (inference) the stacked tensors are kept on the first map and
    reused while every parameter is the same tensor at the same version, already cast to the
    autocast dtype when CUDA autocast is on (the cast autocast would apply per call): a
    diffusion step calls each attention 24 times per step for 200 steps, each call otherwise
    copying and casting c_a x 4 c_a weights."""
    params = [p for linear in linears for p in (linear.weight, linear.bias) if p is not None]
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _concat_linear_params(linears)
    cast = None
    if linears[0].weight.is_cuda and torch.is_autocast_enabled("cuda"):
        cast = torch.get_autocast_dtype("cuda")
    key = (
        cast,
        tuple((id(p), p._version, p.dtype, p.device, tuple(p.shape)) for p in params),
        tuple(linear.bias is None for linear in linears),
    )
    cached = getattr(linears[0], "_pfb_concat_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight, bias = _concat_linear_params(linears)
    if cast is not None:
        weight = weight.to(cast)
        bias = bias.to(cast) if bias is not None else None
    # the cache holds the parameters' ids: keep them alive with it so an id cannot be reused
    object.__setattr__(linears[0], "_pfb_concat_cache", (key, weight, bias, params))
    return weight, bias


def _concat_linear_params(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([linear.weight for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    bias = torch.cat(
        [linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features) for linear in linears]
    )
    return weight, bias


def head_major_pair_bias(pair: torch.Tensor, linear_bias: nn.Linear) -> torch.Tensor:
    """b[*, h, j, k] = linear_bias(pair[*, j, k, :])_h, returned contiguous [*, H, N, N]
    (pair [*, N_j, N_k, c] -> [*, H, N_j, N_k]: also a block of rows of the pair rep).

    Computed as W @ pair^T over the flattened pairs, so the result is already head-major: no
    permute of an [*, N, N, H] output and keys contiguous, as the attention kernel reads them.
    ``linear_bias`` has no bias term (in every host the pair-bias projection has none).
    """
    out = torch.matmul(linear_bias.weight, pair.flatten(-3, -2).transpose(-1, -2))
    return out.unflatten(-1, tuple(pair.shape[-3:-1]))


class FlashBiasModule(nn.Module):
    """Base class: the ``mode`` switch and the optional ``factor_network``.

    Modes:
        "exact":   the host's dense pair bias through the fused op (numerically the original).
        "lowrank": the bias is replaced by phi_q phi_k^T from the factor network, passed to
                   the op as factors; the dense bias is never computed.
        "distill": forward returns (exact output, bias_approximation_loss of the factors
                   against the dense bias), for training the factor network. With
                   ``defer_distill_loss`` set (the triangle and single attentions), the second
                   output is instead the ``BiasSample`` the loss is computed from, for
                   ``batched_approximation_losses`` over many modules at once (fine-tuning).

    Subclasses create their host parameters, then assign ``factor_network`` (or leave None)
    and ``mode``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.factor_network: FactorNetwork | None = None
        self._mode: Mode = "exact"
        self.defer_distill_loss = False

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:  # any str: validated here (a ValueError names the known modes)
        self._check_mode(value)
        self._mode = cast(Mode, value)  # one of MODES: _check_mode raised otherwise

    def _check_mode(self, mode: str) -> None:
        """Raise unless ``mode`` is a known mode this module can run (checked again in forward,
        in case the factor network was removed after the mode was set)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if mode != "exact" and self.factor_network is None:
            raise ValueError(
                f"mode {mode!r} needs a factor network: construct {type(self).__name__} with "
                "factor_config=FactorConfig(...)"
            )
