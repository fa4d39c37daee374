"""Hosts layer: one package per host model (``hosts/<name>/``). Each has an adapter
(``adapter.py``) mapping that host's triangle attention, pair-biased single attention and
diffusion attentions onto our modules (``pairformer_fb.patching`` drives them). The contract an
adapter fulfils is ``base.HostAdapter`` (a Protocol that mypy checks every adapter against,
``hosts/_contract.py``); it also says what the checkpoint and conversion tools need to know of
the host's model (``DISTRIBUTION``, ``CHECKPOINT_KEYS``, ``TRUNK_STACK_CLASS``,
``run_trunk_stack``, ``sample_runner``). Everything else of a host lives in its package too: its
featurisation (``featurize.py``), its model presets and builders (``presets.py``, including the
real-size block the block benchmark times) and its structure benchmark host (``structure.py``).
Nothing outside ``hosts/<name>/`` names a host's classes or state-dict keys. Shared pieces:
``base.py`` and ``call_scope.py`` (the wrappers), the structure benchmark's base class and
registry (``structure_hosts.py``), the presets' shared parts (``presets.py``), the
featurisation's (``pairformer_fb/data/featurize.py``). ``host_module(host, name)`` imports a
host's module by name.

Adding a host means adding its package ``hosts/<name>/`` (``__init__.py`` and ``adapter.py``
satisfying ``HostAdapter``), one line to ``HOSTS`` and one to ``_contract.ADAPTERS`` (and, for
the structure benchmark, its ``structure.py`` and one line to ``structure_hosts.HOSTS``; for the
block benchmark, ``presets.build_block`` / ``BLOCK_KERNELS``).
"""

from __future__ import annotations

import importlib
from typing import cast

from torch import nn

from .base import DEFAULT_KINDS, DIFFUSION_KINDS, KINDS, HostAdapter, PatchedModule, Site, UnsupportedModuleError

# host name -> the module of its adapter
HOSTS: dict[str, str] = {
    "protenix": "pairformer_fb.hosts.protenix.adapter",
    "openfold3": "pairformer_fb.hosts.openfold3.adapter",
    "boltz": "pairformer_fb.hosts.boltz.adapter",
}


class UnsupportedModelError(ValueError):
    """``patch_model`` got a model of no known host (or with nothing to replace)."""


def get_adapter(host: str) -> HostAdapter:
    """The adapter module of ``host`` (a key of ``HOSTS``)."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known hosts: {', '.join(sorted(HOSTS))}")
    return cast(HostAdapter, importlib.import_module(HOSTS[host]))


def host_module(host: str, name: str):
    """The module ``hosts/<host>/<name>.py`` of a known host, e.g. ``host_module("boltz",
    "presets")``; a ValueError naming the known hosts for any other ``host``."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known hosts: {', '.join(sorted(HOSTS))}")
    return importlib.import_module(f"{__name__}.{host}.{name}")


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
    "HostAdapter",
    "DEFAULT_KINDS",
    "DIFFUSION_KINDS",
    "KINDS",
    "PatchedModule",
    "Site",
    "UnsupportedModelError",
    "UnsupportedModuleError",
    "detect_host",
    "get_adapter",
    "host_module",
]
