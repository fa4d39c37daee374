"""The host-specific parts of the structure benchmark (bench/structure.py), one class per host:
what ``host=`` names, in the host's package (``hosts/<host>/structure.py``; :data:`HOSTS` names them). A :class:`StructureHost` knows how to

* ``check`` its prerequisites and settings (before any model work: a missing package or data
  set is a clear error, not a failure half-way);
* ``featurise`` a sample (features + the biotite AtomArray of the atoms the model predicts, in
  the features' order, for writing the structure);
* ``build`` the model (a preset of hosts/<host>/presets.py; a host checkpoint's weights, else random);
* ``predict``: one inference forward, returning the coordinates of the first sample [n_atom, 3];
* ``phase_wraps`` / ``phases``: which host methods :class:`benchmark.PhaseTimer` wraps and how
  the wrapped spans make the benchmark's phases (:data:`PHASES`).

Everything else (variants, seeding, timing loop, agreement metrics, outputs) is the benchmark's
and the same for every host.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from ..data.featurize import InputError, Sample

PHASES = ("input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other")


class HostUnavailable(RuntimeError):
    """A host whose full inference cannot run here (a missing package or data set)."""


def load_weights(model, ckpt, preset: str, label: str, info: dict) -> None:
    """Load a host checkpoint's weights (its factor networks, if any, are the lowrank
    variant's: left out here) into ``model``, strictly; record it in ``info``."""
    from ..modules.factor_network import FACTOR_KEY_MARK

    host_sd = {k: v for k, v in ckpt.state_dict.items() if FACTOR_KEY_MARK not in k}
    try:
        model.load_state_dict(host_sd, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint={ckpt.path} does not fit model={preset} ({label}): {str(e).splitlines()[0]} ..."
        ) from e
    info.update(checkpoint=str(ckpt.path), weights="checkpoint", converted=ckpt.metadata is not None)


def auto_preset(cfg, ckpt, device_default: str) -> str:
    """The preset ``model=`` names; for ``auto`` the one a converted checkpoint records (its
    ``model_preset``, as fine-tuning takes it), else ``device_default`` (tiny on a CPU, the
    host's full size on CUDA)."""
    if cfg.model != "auto":
        return cfg.model
    recorded = (ckpt.metadata or {}).get("model_preset") if ckpt is not None else None
    return recorded or device_default


def finish_build(model, device, ckpt, cfg, preset: str, label: str, info: dict):
    from .presets import randomise_

    if ckpt is None:
        randomise_(model, seed=cfg.seed)
    else:
        load_weights(model, ckpt, preset, label, info)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return model.to(device).eval(), info


class StructureHost:
    """The interface (see the module docstring). ``features_note``: what the report says about
    the features."""

    name = ""
    features_note = ""

    def check(self, cfg) -> None:
        pass

    def featurise(self, sample: Sample, cfg):
        raise NotImplementedError

    def build(self, cfg, device: torch.device, ckpt):
        raise NotImplementedError

    def predict(self, model, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def phase_wraps(self, model) -> list[tuple[Any, str, str, str | None]]:
        """(owner, method name, span key, end-stamp key or None) of each method to time."""
        raise NotImplementedError

    def phases(self, spans: Mapping[str, float], stamps: Mapping[str, float]) -> dict[str, float]:
        """The phases of :data:`PHASES` but ``other`` from the wrapped methods' spans and stamps."""
        raise NotImplementedError

    def schedule(self, model, values: Mapping[str, int] | None = None) -> dict[str, int]:
        """``{"cycles", "steps", "samples"}`` a prediction of ``model`` runs: trunk passes
        (recycling included), diffusion steps, diffusion samples; with ``values``, set them
        first (the ladder, bench/ladder.py, runs long rungs with fewer)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# the registry: host name -> "module:class" of its StructureHost, in the host's package
# (hosts/<host>/structure.py), imported when asked for (each host module imports this one)

HOSTS: dict[str, str] = {
    "protenix": "pairformer_fb.hosts.protenix.structure:ProtenixHost",
    "openfold3": "pairformer_fb.hosts.openfold3.structure:OpenFold3Host",
    "boltz": "pairformer_fb.hosts.boltz.structure:BoltzHost",
}


def host_class(name: str) -> type[StructureHost]:
    """The :class:`StructureHost` class of host ``name`` (a key of :data:`HOSTS`)."""
    if name not in HOSTS:
        raise ValueError(f"unknown host={name!r}; known: {', '.join(HOSTS)}")
    module, cls = HOSTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_host(name: str) -> StructureHost:
    return host_class(name)()


__all__ = [
    "HOSTS",
    "PHASES",
    "HostUnavailable",
    "InputError",
    "StructureHost",
    "finish_build",
    "get_host",
    "host_class",
    "load_weights",
]
