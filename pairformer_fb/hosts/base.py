"""Pieces shared by the host adapters: the contract an adapter fulfils (``HostAdapter``), where
a module is replaced (``Site``), the wrapper base class (``PatchedModule``) and the helpers that
build one of our modules on the host's own parameter objects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence, TypeVar, runtime_checkable

import torch
from torch import nn

from ..modules import FlashBiasTriangleAttention
from ..modules.common import FlashBiasModule
from ..modules.factor_network import BiasSample, FactorConfig, FactorNetwork

if TYPE_CHECKING:
    from ..modules.bias_cache import SVDConfig

Kind = Literal["triangle", "single", "diffusion", "atom"]
KINDS: tuple[str, ...] = ("triangle", "single", "diffusion", "atom")
# the kinds patch_model replaces unless told otherwise (the Pairformer's attentions)
DEFAULT_KINDS: tuple[str, ...] = ("triangle", "single")
# the diffusion module's conditioned attentions: the token transformer's and the atom transformer's
DIFFUSION_KINDS: tuple[str, ...] = ("diffusion", "atom")


class UnsupportedModuleError(ValueError):
    """A host module that an adapter found but cannot replace exactly (an option of the host's
    module that our modules do not implement)."""


@dataclass
class Site:
    """One host module to replace.

    Attributes:
        path: its qualified name in the patched model ("" parts joined by ".").
        parent, attr: the module that holds it and the attribute name it is held under (parent
            None: a host module built alone, e.g. by a test or benchmark, that only
            ``make_replacement`` sees).
        module: the host module itself (typed ``Any``: its submodules and attributes are the
            host's, reached by the host's names, which the tests check on the real host modules).
        kind: "triangle" (triangle attention), "single" (pair-biased single attention),
            "diffusion" (the diffusion transformer's conditioned attention) or "atom" (the
            atom transformer's local attention).
        node: for triangle attention, the node it attends around *in the host's block*
            ("starting" / "ending"); None for single attention.
        stack: which of the host's Pairformer stacks holds it (host-specific names, e.g.
            "pairformer", "msa", "template", "confidence").
        block: the index of its block within that stack.
        context: for "diffusion" / "atom", the host module whose calls bound the reuse of the
            bias (the diffusion module; None: reuse only for the same pair tensor).
    """

    path: str
    parent: nn.Module | None
    attr: str
    module: Any
    kind: str
    node: str | None
    stack: str
    block: int
    context: nn.Module | None = None


class PatchedModule(nn.Module):
    """Base of the adapters' wrappers: replaces a host module in its parent, keeps the host's
    forward signature and calls ``self.flash_bias`` (one of our modules, built on the host
    module's own nn.Parameter objects).

    The wrapper registers the host module's own children, parameters and buffers under their
    names, so a patched model's ``state_dict`` has the host's keys (a host checkpoint loads into
    it as before) plus ``<path>.factor_network.*`` for the factor networks it added; those are
    registered here, our module itself is not (its other parameters are the host's). The host
    module is kept, unregistered, in ``host_module`` for ``unpatch_model``. In "distill" mode
    the wrapper returns the update, as the host's caller expects, and keeps the bias
    approximation loss of its last call in ``last_distill_loss``; with our module's
    ``defer_distill_loss`` set, the ``BiasSample`` of that loss in ``last_distill_sample`` instead.
    """

    def __init__(self, host_module: nn.Module, flash_bias: FlashBiasModule, site: Site):
        super().__init__()
        # tuples, so that nn.Module registers neither as a child
        self._host = (host_module,)
        self._flash_bias = (flash_bias,)
        self.site_path, self.site_kind, self.site_node = site.path, site.kind, site.node
        self.site_stack, self.site_block = site.stack, site.block
        self.last_distill_loss: torch.Tensor | None = None
        self.last_distill_sample: BiasSample | None = None
        adopted = [*host_module._modules, *host_module._parameters, *host_module._buffers]
        for name in adopted:
            if hasattr(self, name) or name == "factor_network":
                raise UnsupportedModuleError(
                    f"{site.path}: the host module's attribute {name!r} clashes with the wrapper's"
                )
        for name, child in host_module._modules.items():
            self.add_module(name, child)
        for name, param in host_module._parameters.items():
            self.register_parameter(name, param)
        for name, buf in host_module._buffers.items():
            self.register_buffer(name, buf, persistent=name not in host_module._non_persistent_buffers_set)
        if flash_bias.factor_network is not None:
            self.factor_network = flash_bias.factor_network

    @property
    def host_module(self) -> nn.Module:
        return self._host[0]

    @property
    def flash_bias(self) -> FlashBiasModule:
        return self._flash_bias[0]

    @property
    def mode(self) -> str:
        return self.flash_bias.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.flash_bias.mode = value

    def on_patch(self) -> None:
        """Called by ``patch_model`` once the wrapper is in place (e.g. to install hooks)."""

    def on_unpatch(self) -> None:
        """Called by ``unpatch_model`` once the host module is back (undo ``on_patch``)."""

    def _finish(self, out):
        if isinstance(out, tuple):  # "distill": (update, loss) or (update, BiasSample)
            out, result = out
            if isinstance(result, BiasSample):
                self.last_distill_sample = result
            else:
                self.last_distill_loss = result
        return out

    def extra_repr(self) -> str:
        return f"host={type(self.host_module).__name__}, path={self.site_path!r}"


_Module = TypeVar("_Module", bound=FlashBiasModule)


def build_on_meta(cls: type[_Module], **kwargs) -> _Module:
    """Our module with its parameters on the meta device (nothing allocated): the caller then
    assigns the host's parameter objects in their place (``share_linear`` / ``share_layer_norm``)."""
    with torch.device("meta"):
        return cls(**kwargs)


def _share(dst: nn.Module, name: str, param: torch.Tensor | None, where: str) -> None:
    # param: a host's nn.Parameter (torch's stubs type nn.Linear.weight a Tensor)
    own = getattr(dst, name)
    if (own is None) != (param is None):
        raise UnsupportedModuleError(
            f"{where}: the host's {name} is {'absent' if param is None else 'present'} but ours is not"
        )
    if param is None:
        return
    if tuple(own.shape) != tuple(param.shape):
        raise UnsupportedModuleError(
            f"{where}: {name} shape {tuple(param.shape)} of the host, {tuple(own.shape)} expected"
        )
    setattr(dst, name, param)  # the same nn.Parameter object: nothing is copied


# our modules' bias switches of their q / k / v / gate / out projections, by the host projection's letter
_PROJECTION_BIAS_FLAGS = {"q": "q_bias", "k": "k_bias", "v": "v_bias", "g": "gate_bias", "o": "out_bias"}


def projection_biases(host: Any, path: str) -> dict[str, bool]:
    """The ``q_bias`` .. ``out_bias`` arguments of our module: whether each of the host module's
    q / k / v / g / o projections has a bias. ``path``: their path in ``host`` with ``{}`` for
    the letter, e.g. ``"mha.linear_{}"``, ``"attention.linear_{}"``, ``"proj_{}"``."""
    return {flag: host.get_submodule(path.format(p)).bias is not None for p, flag in _PROJECTION_BIAS_FLAGS.items()}


def share_projections(ours: nn.Module, host: Any, path: str, where: str) -> None:
    """Make our ``linear_q`` .. ``linear_o`` use the parameter objects of the host's q / k / v /
    g / o projections (``path`` as in :func:`projection_biases`; ``where``: the host module's path)."""
    for p in _PROJECTION_BIAS_FLAGS:
        share_linear(getattr(ours, f"linear_{p}"), host.get_submodule(path.format(p)), f"{where}.{path.format(p)}")


def share_linear(dst: nn.Linear, src: nn.Linear, where: str) -> None:
    """Make ``dst`` use ``src``'s weight and bias parameter objects."""
    _share(dst, "weight", src.weight, where)
    _share(dst, "bias", src.bias, where)


def share_layer_norm(dst: nn.LayerNorm, src: Any, where: str) -> None:  # src: a host module (its eps)
    """Make ``dst`` use the host layer norm's weight / bias objects and its epsilon (the host
    class may be any layer norm over the last dim with ``eps`` and optional ``weight`` / ``bias``:
    a host norm without scale or offset leaves ours without it too)."""
    if not hasattr(src, "eps"):
        raise UnsupportedModuleError(f"{where}: host layer norm {type(src).__name__} has no 'eps'")
    for attr in ("weight", "bias"):
        param = getattr(src, attr, None)
        if param is None:
            setattr(dst, attr, None)
        else:
            _share(dst, attr, param, where)
    dst.eps = float(src.eps)


MASK_INF = 1e9  # the OpenFold-family triangle attentions' additive mask value, the FlashBias op's too


def build_triangle_attention(
    site: Site,
    *,
    node: dict,
    bias_linear: str,
    mode: str,
    factor_config: FactorConfig | None,
    backend: str,
    host_label: str,
):
    """Our triangle attention on the parameters of an OpenFold-family ``TriangleAttention`` (the
    layout Protenix, Boltz-2 and OpenFold3 share: ``layer_norm``, a bias projection named
    ``bias_linear``, ``mha.linear_q/k/v/g/o``, ``inf``, ``c_in``); ``node`` holds the
    ``node`` / ``ending_bias`` arguments of the host's convention."""
    host, where = site.module, site.path
    mha = host.mha
    if getattr(mha, "linear_g", None) is None:
        raise UnsupportedModuleError(f"{where}: triangle attention without gating is not supported")
    if float(host.inf) != MASK_INF:
        raise UnsupportedModuleError(f"{where}: inf={host.inf:g} (the FlashBias op masks with 1e9)")
    for name in (bias_linear, "mha.linear_q", "mha.linear_k", "mha.linear_v", "mha.linear_g", "mha.linear_o"):
        check_linear(host.get_submodule(name), f"{where}.{name}")
    ours = build_on_meta(
        FlashBiasTriangleAttention,
        c_z=host.c_in,
        n_heads=mha.no_heads,
        head_dim=mha.c_hidden,
        **node,
        **projection_biases(host, "mha.linear_{}"),
        layer_norm_eps=float(host.layer_norm.eps),
        backend=backend,
    )
    share_layer_norm(ours.layer_norm, host.layer_norm, f"{where}.layer_norm")
    bias_projection = host.get_submodule(bias_linear)
    share_linear(ours.linear_b, bias_projection, f"{where}.{bias_linear}")
    share_projections(ours, host, "mha.linear_{}", where)
    ours.factor_network = factor_network(factor_config, host.c_in, mha.no_heads, bias_projection.weight, host_label)
    check_no_meta(ours, where)
    ours.mode = mode
    return ours


def check_no_meta(module: nn.Module, where: str) -> None:
    """Every parameter / buffer was replaced by a real host tensor (or is a factor network's)."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_meta:
            raise UnsupportedModuleError(f"{where}: {name} was not mapped to a host parameter")


def stack_and_index(model: nn.Module, path: str, stack_of_ancestor: dict[str, str]) -> tuple[str, int]:
    """(stack name, block index) of the block at ``path``: the stack is named by the innermost
    ancestor whose class name is a key of ``stack_of_ancestor`` (default "pairformer", the trunk),
    the index is the last numeric part of the path."""
    stack, m = "pairformer", model
    if path:  # the model itself and every module on the way down to the block's parent
        stack = stack_of_ancestor.get(type(model).__name__, stack)
        for part in path.split(".")[:-1]:
            m = getattr(m, part)
            stack = stack_of_ancestor.get(type(m).__name__, stack)
    numbers = re.findall(r"(?:^|\.)(\d+)(?=\.|$)", path)
    return stack, int(numbers[-1]) if numbers else 0


def check_linear(linear: nn.Module, where: str) -> None:
    """Refuse a host linear map with a non-default matmul precision (not reproduced)."""
    if getattr(linear, "precision", None) is not None:
        raise UnsupportedModuleError(f"{where}: a linear map with precision={linear.precision} is not supported")


def factor_network(
    config: FactorConfig | None, c_z: int, n_heads: int, like: torch.Tensor, host: str
) -> FactorNetwork | None:
    """The factor network of a lowrank / distill module, on ``like``'s device and dtype (None
    without a config). Host Pairformer blocks pass no single inputs to their attention modules."""
    if config is None:
        return None
    if config.use_s_inputs:
        raise UnsupportedModuleError(
            f"{host}'s Pairformer blocks pass no s_inputs to their attention modules: use a "
            "FactorConfig with use_s_inputs=False"
        )
    return FactorNetwork(c_z, n_heads, config).to(device=like.device, dtype=like.dtype)


def outermost(model: nn.Module, pred: Callable[[nn.Module], bool]) -> list[nn.Module]:
    """The modules of ``model`` for which ``pred`` holds that lie inside no other such module,
    in model order (e.g. a host's diffusion module, not the blocks inside it)."""
    found: list[nn.Module] = []
    inner: set[int] = set()
    for m in model.modules():
        if id(m) in inner or not pred(m):
            continue
        found.append(m)
        inner.update(id(x) for x in m.modules())
    return found


@runtime_checkable
class HostAdapter(Protocol):
    """What a host adapter module (``hosts/<host>/adapter.py``) provides; ``hosts/_contract.py``
    has mypy check each adapter module against it, and ``tests/test_hosts_contract.py`` checks
    it at run time.

    * ``HOST``: its name here; ``PACKAGE``: the top-level package of the host's classes (the
      host is detected from a model without importing anything); ``INSTALL_HINT``;
    * ``STACKS``: the names of the host's Pairformer-like stacks; ``DEFAULT_STACKS``;
    * ``find_sites``: the modules to replace, in model order;
    * ``make_replacement``: the wrapper, built on the host module's own parameter objects;
    * ``graph_modules``: the modules whose per-step calls ``graph_diffusion`` captures.

    What the tools need to know of the host's model and checkpoints (so that nothing outside
    ``hosts/<host>/`` names a host's classes or keys):

    * ``DISTRIBUTION``: the host's distribution in the package registry;
    * ``CHECKPOINT_KEYS``: a pattern that only the state-dict keys of this host's trunk match
      (``convert.checkpoint`` tells a checkpoint's host by it);
    * ``TRUNK_STACK_CLASS`` and ``run_trunk_stack``: the trunk stack's class name and its calling
      convention (``convert.samples`` runs bare stacks on sample lengths);
    * ``sample_runner``: how to run the host's full model on one sequence, if it can be;
    * ``AFTER_SAMPLING_CLASSES``: the classes of the modules a prediction runs only after its
      diffusion sampling (the confidence heads): ``patch_model`` releases the diffusion
      attentions' cached biases when one starts, so that it has that memory back;
    * ``lean_methods``: the methods of a host module that ``patch_model`` replaces on the
      instance (``lean_memory``) by ones computing the same outputs with less peak memory (e.g.
      Protenix's confidence head one diffusion sample per call), by name; empty for most."""

    HOST: str
    PACKAGE: str
    INSTALL_HINT: str
    STACKS: tuple[str, ...]
    DEFAULT_STACKS: tuple[str, ...]
    DISTRIBUTION: str
    CHECKPOINT_KEYS: re.Pattern[str]
    TRUNK_STACK_CLASS: str
    AFTER_SAMPLING_CLASSES: tuple[str, ...]

    def find_sites(self, model: nn.Module, *, stacks: Sequence[str], kinds: Sequence[str]) -> list[Site]: ...

    def make_replacement(
        self,
        site: Site,
        *,
        mode: str,
        factor_config: FactorConfig | None,
        backend: str = "auto",
        svd_config: SVDConfig | None = None,
    ) -> PatchedModule: ...

    def graph_modules(self, model: nn.Module) -> list[nn.Module]: ...

    def run_trunk_stack(
        self, stack: nn.Module, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> None: ...

    def sample_runner(self, model: nn.Module) -> tuple[Callable[[str, int], object], str] | None: ...

    def lean_methods(self, module: nn.Module) -> dict[str, Callable[..., Any]]: ...
