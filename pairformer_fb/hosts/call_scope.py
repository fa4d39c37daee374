"""A :class:`BiasScope` bound to the calls of one host module (e.g. a diffusion module): forward
hooks enter the scope with the call's arguments (all but the ``varying`` ones, e.g. the noisy
coordinates and the noise level) plus given parameters, so that a bias cached in the scope is
reused across the calls (diffusion steps) whose fixed inputs are the same tensors, unmodified.
Shared by every wrapper whose bias reuse that module's calls bound (``scope_of``)."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..modules.bias_cache import BiasScope
from .base import PatchedModule, Site

if TYPE_CHECKING:
    from ..modules import FlashBiasDiffusionAttention, FlashBiasPrecomputedBiasAttention

    # our modules that cache their bias within a scope (``bias_cache``, ``scope``)
    ScopedFlashBias = FlashBiasDiffusionAttention | FlashBiasPrecomputedBiasAttention


class CallScope:
    """The BiasScope of one host module and the forward hooks that enter / leave it."""

    def __init__(self, module: nn.Module, varying: Iterable[str], params: Iterable[nn.Parameter] = ()):
        self.scope = BiasScope()
        self._module = weakref.ref(module)
        self._varying = frozenset(varying)
        self._params = list(params)
        self._users = 0
        self._handles: list[RemovableHandle] = []
        self._signature = inspect.signature(module.forward)

    def _enter(self, module, args, kwargs):
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            self.scope.invalidate()  # a call we cannot read: no reuse across it
            self.scope.enter([])
            return
        bound.apply_defaults()
        fixed = [(name, value) for name, value in bound.arguments.items() if name not in self._varying]
        self.scope.enter([fixed, self._params])

    def _exit(self, module, args, kwargs, output):
        self.scope.exit()

    def attach(self) -> None:
        """Install the hooks (counted: one per wrapper that uses the scope)."""
        if self._users == 0:
            module = self._module()
            # alive: attach is called by on_patch, with the module in the model being patched
            assert module is not None
            self._handles = [
                module.register_forward_pre_hook(self._enter, with_kwargs=True),
                module.register_forward_hook(self._exit, with_kwargs=True, always_call=True),
            ]
        self._users += 1

    def detach(self) -> None:
        """Undo one ``attach``; the last one removes the hooks and frees what was cached."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            for h in self._handles:
                h.remove()
            self._handles = []
            self.scope.invalidate()
            self.scope.trust_inference_tensors = False


_SCOPES: weakref.WeakKeyDictionary[nn.Module, CallScope] = weakref.WeakKeyDictionary()


def scope_of(module: nn.Module, varying: Iterable[str], params: Iterable[nn.Parameter] = ()) -> CallScope:
    """The CallScope of ``module`` (created on first use with ``varying`` / ``params``)."""
    if module not in _SCOPES:
        _SCOPES[module] = CallScope(module, varying, params)
    return _SCOPES[module]


class ScopedPatchedModule(PatchedModule):
    """A PatchedModule whose FlashBias module caches its bias within a CallScope (the diffusion
    attentions): patching attaches the scope's hooks and hands the module its BiasScope;
    unpatching detaches them and frees the cache. ``call_scope`` None: no scope (the module
    then reuses a bias only for the same, unmodified z).

    ``trust_inference_tensors`` (set before ``on_patch``; ``patch_model``'s option): whether the
    scope and the module's cache let inference tensors match by identity, so that the bias is
    reused under ``torch.inference_mode`` too (see ``modules.bias_cache``)."""

    def __init__(self, host_module, flash_bias: ScopedFlashBias, site: Site, call_scope: CallScope | None):
        super().__init__(host_module, flash_bias, site)
        self._scope = (call_scope,) if call_scope is not None else None  # a tuple: not a submodule
        self.trust_inference_tensors = False

    @property
    def flash_bias(self) -> ScopedFlashBias:
        return cast("ScopedFlashBias", self._flash_bias[0])  # the one __init__ took

    def on_patch(self) -> None:
        trust = bool(self.trust_inference_tensors)
        self.flash_bias.bias_cache.trust_inference_tensors = trust
        if self._scope is not None:
            self._scope[0].attach()
            scope = self._scope[0].scope
            # one scope per host module, shared by its wrappers: trusted if any wrapper asks
            # (patch_model passes one setting to all)
            scope.trust_inference_tensors = scope.trust_inference_tensors or trust
            self.flash_bias.scope = scope

    def on_unpatch(self) -> None:
        if self._scope is not None:
            self._scope[0].detach()
        self.flash_bias.scope = None
        self.flash_bias.bias_cache.clear()
        self.flash_bias.bias_cache.trust_inference_tensors = False
