"""Hosts layer: one package per host model (``hosts/<name>/adapter.py``), each adapter mapping that host's triangle attention and
pair-biased single attention onto our modules (``pairformer_fb.patching.patching`` drives them).

A host adapter is a module with (shared pieces in ``hosts/base.py`` and ``hosts/call_scope.py``;
the structure-benchmark hosts are in ``hosts/structure_hosts.py``, model presets in ``hosts/presets.py``):

* ``HOST`` (its name here), ``PACKAGE`` (the top-level package of the host's classes, used to
  detect the host from a model without importing anything) and ``INSTALL_HINT``;
* ``STACKS`` (the names of the host's Pairformer-like stacks) and ``DEFAULT_STACKS``;
* ``find_sites(model, *, stacks, kinds) -> list[Site]``: the modules to replace, in model order;
* ``make_replacement(site, *, mode, factor_config, backend) -> PatchedModule``: the wrapper,
  built on the host module's own parameter objects.

Adding a host means adding its package ``hosts/<name>/`` (``__init__.py`` and ``adapter.py``)
and one line to ``HOSTS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

from .base import DEFAULT_KINDS, DIFFUSION_KINDS, KINDS, PatchedModule, Site, UnsupportedModuleError

# host name -> the module of its adapter
HOSTS: dict[str, str] = {
    "protenix": "pairformer_fb.hosts.protenix.adapter",
    "openfold3": "pairformer_fb.hosts.openfold3.adapter",
    "boltz": "pairformer_fb.hosts.boltz.adapter",
}


class UnsupportedModelError(ValueError):
    """``patch_model`` got a model of no known host (or with nothing to replace)."""


def get_adapter(host: str) -> ModuleType:
    """The adapter module of ``host`` (a key of ``HOSTS``)."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known hosts: {', '.join(sorted(HOSTS))}")
    return importlib.import_module(HOSTS[host])


def detect_host(model: nn.Module) -> str:
    """The host whose classes ``model`` is built from, by the top-level package of its
    modules' classes (nothing is imported). Raises UnsupportedModelError if none is known."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    roots = {type(m).__module__.split(".")[0] for m in model.modules()}
    found = [host for host in HOSTS if get_adapter(host).PACKAGE in roots]
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__} is built from none of the supported hosts "
            f"({', '.join(sorted(HOSTS))}): its modules come from the packages {', '.join(sorted(roots))}"
        )
    if len(found) > 1:
        raise UnsupportedModelError(f"{type(model).__name__} mixes modules of several hosts ({found}); pass host=")
    return found[0]


__all__ = [
    "HOSTS",
    "DEFAULT_KINDS",
    "DIFFUSION_KINDS",
    "KINDS",
    "PatchedModule",
    "Site",
    "UnsupportedModelError",
    "UnsupportedModuleError",
    "detect_host",
    "get_adapter",
]
