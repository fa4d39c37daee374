"""The bias-reuse scope of one host diffusion module, host-independent: a :class:`BiasScope`
entered around every call of the module (forward hooks) with every argument except the ones
that vary per step (the noisy coordinates, the noise level), plus the module's parameters that
the biases can depend on upstream of the attentions. Any of them replaced or modified in place
starts a new generation (the biases are recomputed).

(Protenix's adapter has the same mechanism in its own ``_DiffusionScope``; this generic form is
what the OpenFold3 adapter uses.)
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable

from torch import nn

from ..modules.bias_cache import BiasScope


class DiffusionScope:
    """The BiasScope of one diffusion module and the forward hooks that enter / leave it.

    Args:
        module: the host's diffusion module (one call = one denoising step).
        varying: the names of its forward arguments that change from step to step.
        params: the parameters whose in-place change must invalidate the biases.
    """

    def __init__(self, module: nn.Module, varying: Iterable[str], params: Iterable[nn.Parameter]):
        self.scope = BiasScope()
        self._module = weakref.ref(module)
        self._varying = frozenset(varying)
        self._params = list(params)
        self._users = 0
        self._handles = []
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
        """One more user (a patched attention): the hooks are installed by the first."""
        if self._users == 0:
            module = self._module()
            self._handles = [
                module.register_forward_pre_hook(self._enter, with_kwargs=True),
                module.register_forward_hook(self._exit, with_kwargs=True, always_call=True),
            ]
        self._users += 1

    def detach(self) -> None:
        """One user fewer: the last removes the hooks and frees what was cached."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            for h in self._handles:
                h.remove()
            self._handles = []
            self.scope.invalidate()
