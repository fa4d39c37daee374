"""The host-specific parts of the structure benchmark (tools/benchmark.py), one class per host:
what ``host=`` names. A :class:`StructureHost` knows how to

* ``check`` its prerequisites and settings (before any model work: a missing package or data
  set is a clear error, not a failure half-way);
* ``featurise`` a sample (features + the biotite AtomArray of the atoms the model predicts, in
  the features' order, for writing the structure);
* ``build`` the model (a preset of tools/presets.py; a host checkpoint's weights, else random);
* ``predict``: one inference forward, returning the coordinates of the first sample [n_atom, 3];
* ``phase_wraps`` / ``phases``: which host methods :class:`benchmark.PhaseTimer` wraps and how
  the wrapped spans make the benchmark's phases (:data:`PHASES`).

Everything else (variants, seeding, timing loop, agreement metrics, outputs) is the benchmark's
and the same for every host.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from .featurize import InputError, Sample

PHASES = ("input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other")


class HostUnavailable(RuntimeError):
    """A host whose full inference cannot run here (a missing package or data set)."""


def _load_weights(model, ckpt, preset: str, label: str, info: dict) -> None:
    """Load a host checkpoint's weights (its factor networks, if any, are the lowrank
    variant's: left out here) into ``model``, strictly; record it in ``info``."""
    from .checkpoint import FACTOR_KEY_MARK

    host_sd = {k: v for k, v in ckpt.state_dict.items() if FACTOR_KEY_MARK not in k}
    try:
        model.load_state_dict(host_sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint={ckpt.path} does not fit model={preset} ({label}): "
                         f"{str(e).splitlines()[0]} ...") from e
    info.update(checkpoint=str(ckpt.path), weights="checkpoint", converted=ckpt.metadata is not None)


def _finish(model, device, ckpt, cfg, preset: str, label: str, info: dict):
    from .presets import randomise_

    if ckpt is None:
        randomise_(model, seed=cfg.seed)
    else:
        _load_weights(model, ckpt, preset, label, info)
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


# ---------------------------------------------------------------------------------------------
# Protenix


def best_protenix_kernels(device: torch.device) -> dict[str, str]:
    """The host's fastest available triangle kernels: on CUDA cuEquivariance when its packages
    import, else Protenix's bundled Triton triangle attention ("triattention") with its torch
    triangle multiplication; on a CPU the torch path."""
    if device.type != "cuda":
        return {"triangle_attention": "torch", "triangle_multiplicative": "torch"}
    if all(importlib.util.find_spec(m) is not None for m in ("cuequivariance_torch", "cuequivariance_ops_torch")):
        return {"triangle_attention": "cuequivariance", "triangle_multiplicative": "cuequivariance"}
    return {"triangle_attention": "triattention", "triangle_multiplicative": "torch"}


class ProtenixHost(StructureHost):
    """Protenix 2.0.0: ``model(features, None, None, mode="inference")`` on the offline features
    of tools/featurize.py. Phases: ``input_embedder``, ``msa_module``, ``get_pairformer_output``
    (recycling: template embedder + trunk Pairformer, input embedding and MSA module subtracted),
    diffusion = from the end of the trunk to the end of ``sample_diffusion`` (its caches and the
    sampling), ``run_confidence_head``."""

    name = "protenix"
    features_note = ("offline Protenix features (tools/featurize.py): CCD atoms and ideal reference conformers "
                     "(biotite), single-sequence MSA unless msa_dir is given, no templates")
    KERNELS = ("auto", "torch", "cuequivariance", "triattention", "deepspeed")

    def check(self, cfg) -> None:
        if cfg.kernels not in self.KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(self.KERNELS)} for host=protenix, got {cfg.kernels!r}")

    def featurise(self, sample, cfg):
        from .featurize import protenix_features

        return protenix_features(sample, msa_dir=cfg.msa_dir, seed=cfg.seed)

    def build(self, cfg, device, ckpt):
        from .presets import build_protenix

        cpu = device.type == "cpu"
        preset = cfg.model if cfg.model != "auto" else ("tiny" if cpu else "base")
        if cfg.kernels == "auto":
            kernels = best_protenix_kernels(device)
        else:
            kernels = {"triangle_attention": cfg.kernels,
                       "triangle_multiplicative": cfg.kernels if cfg.kernels in ("torch", "cuequivariance") else "torch"}
        overrides = {**kernels, **dict(cfg.get("overrides") or {})}
        model, configs = build_protenix(preset, overrides, cpu=cpu)
        info = {"host": "protenix", "preset": preset, "model_name": configs.model_name, "kernels": kernels,
                "overrides": dict(overrides), "checkpoint": None, "weights": "random"}
        return _finish(model, device, ckpt, cfg, preset, configs.model_name, info)

    def predict(self, model, feats):
        pred, _, _ = model(dict(feats), None, None, mode="inference")
        return pred["coordinate"][0]

    def phase_wraps(self, model):
        return [(model.input_embedder, "forward", "input_embedding", None),
                (model.msa_module, "forward", "msa_module", None),
                (model, "get_pairformer_output", "get_pairformer_output", "trunk_end"),
                (model, "sample_diffusion", "sample_diffusion", "diffusion_end"),
                (model, "run_confidence_head", "confidence_head", None)]

    def phases(self, spans, stamps):
        embed, msa = spans.get("input_embedding", 0.0), spans.get("msa_module", 0.0)
        return {"input_embedding": embed, "msa_module": msa,
                "pairformer_trunk": spans["get_pairformer_output"] - embed - msa,
                "diffusion_sampling": stamps["diffusion_end"] - stamps["trunk_end"],  # caches + sampling
                "confidence_head": spans.get("confidence_head", 0.0)}


# ---------------------------------------------------------------------------------------------
# OpenFold3


def _set_dotted(config, key: str, value) -> None:
    """``config.a.b.c = value`` for key "a.b.c" of an ml_collections ConfigDict; an unknown key is
    an error naming it."""
    *path, last = key.split(".")
    node = config
    for i, p in enumerate(path):
        if p not in node:
            raise ValueError(f"overrides: OpenFold3's config has no {'.'.join(path[:i + 1])!r} (in {key!r})")
        node = node[p]
    if last not in node:
        raise ValueError(f"overrides: OpenFold3's config has no {key!r}")
    node[last] = value


class OpenFold3Host(StructureHost):
    """OpenFold3 0.5.0: ``model(batch)`` (``OpenFold3.forward`` in eval mode: ``run_trunk`` with
    ``num_recycles`` recycles, the full diffusion rollout ``sample_diffusion``, the auxiliary heads)
    on the offline features of ``featurize.openfold3_features``. Phases: ``input_embedder``,
    ``msa_module_embedder`` + ``msa_module``, the rest of ``run_trunk`` (template embedder + trunk
    Pairformer over the recycles), ``sample_diffusion``, ``aux_heads`` (the confidence heads with
    their Pairformer, and the distogram head)."""

    name = "openfold3"
    features_note = ("offline OpenFold3 features (featurize.openfold3_features): CCD atoms and ideal reference "
                     "conformers (biotite; OpenFold3 would use RDKit conformers of its CCD cache), "
                     "single-sequence MSA unless msa_dir is given, no templates")
    # kernels= -> OpenFold3's settings.memory.eval switches of the original's triangle attention
    KERNELS: ClassVar[dict[str, dict[str, bool]]] = {
        "torch": {}, "triton": {"use_triton_triangle_kernels": True},
        "cuequivariance": {"use_cueq_triangle_kernels": True}, "deepspeed": {"use_deepspeed_evo_attention": True}}

    def check(self, cfg) -> None:
        if cfg.kernels != "auto" and cfg.kernels not in self.KERNELS:
            raise ValueError(f"kernels must be auto or one of {', '.join(self.KERNELS)} for host=openfold3, "
                             f"got {cfg.kernels!r}")
        if cfg.model not in ("auto", "tiny", "default"):
            raise ValueError(f"model must be auto, tiny or default for host=openfold3, got {cfg.model!r}")
        from .featurize import _openfold3_constants

        _openfold3_constants()  # importable

    def featurise(self, sample, cfg):
        from .featurize import openfold3_features

        return openfold3_features(sample, msa_dir=cfg.msa_dir, seed=cfg.seed)

    def _kernels(self, cfg, device) -> str:
        if cfg.kernels != "auto":
            if device.type != "cuda" and cfg.kernels != "torch":
                raise ValueError(f"kernels={cfg.kernels} needs CUDA; a CPU runs kernels=torch")
            return cfg.kernels
        if device.type != "cuda":
            return "torch"
        if importlib.util.find_spec("cuequivariance_torch") is not None:
            return "cuequivariance"
        return "triton"  # OpenFold3's own default

    def build(self, cfg, device, ckpt):
        from importlib.metadata import version

        from openfold3.projects.of3_all_atom.model import OpenFold3

        from .presets import openfold3_config

        cpu = device.type == "cpu"
        preset = cfg.model if cfg.model != "auto" else ("tiny" if cpu else "default")
        config = openfold3_config(preset)
        kernels = self._kernels(cfg, device)
        switches = {"use_triton_triangle_kernels": False, "use_cueq_triangle_kernels": False,
                    "use_deepspeed_evo_attention": False, "use_lma": False, **self.KERNELS[kernels]}
        overrides = {f"settings.memory.eval.{k}": v for k, v in switches.items()} | dict(cfg.get("overrides") or {})
        for k, v in overrides.items():
            _set_dotted(config, k, v)
        model = OpenFold3(config)
        label = f"OpenFold3 {version('openfold3')}"
        info = {"host": "openfold3", "preset": preset, "model_name": label,
                "kernels": {"triangle_attention": kernels}, "overrides": overrides, "checkpoint": None,
                "weights": "random", "num_recycles": int(config.architecture.shared.num_recycles),
                "diffusion_steps": int(config.architecture.shared.diffusion.no_full_rollout_steps),
                "diffusion_samples": int(config.architecture.shared.diffusion.no_full_rollout_samples)}
        return _finish(model, device, ckpt, cfg, preset, label, info)

    def predict(self, model, feats):
        _, out = model(dict(feats))
        return out["atom_positions_predicted"][0, 0]  # [batch, sample, atom, 3]

    def phase_wraps(self, model):
        return [(model.input_embedder, "forward", "input_embedding", None),
                (model.msa_module_embedder, "forward", "msa_module", None),
                (model.msa_module, "forward", "msa_module", None),
                (model, "run_trunk", "run_trunk", None),
                (model.sample_diffusion, "forward", "diffusion_sampling", None),
                (model.aux_heads, "forward", "confidence_head", None)]

    def phases(self, spans, stamps):
        embed, msa = spans.get("input_embedding", 0.0), spans.get("msa_module", 0.0)
        return {"input_embedding": embed, "msa_module": msa, "pairformer_trunk": spans["run_trunk"] - embed - msa,
                "diffusion_sampling": spans.get("diffusion_sampling", 0.0),
                "confidence_head": spans.get("confidence_head", 0.0)}


# ---------------------------------------------------------------------------------------------
# Boltz-2


# what full Boltz-2 inference needs beyond the boltz package's Pairformer (module -> pip spec):
# the Lightning module Boltz2 (boltz.model.models.boltz2) imports pytorch_lightning (which needs
# lightning_utilities) and torchmetrics; boltz's data pipeline (boltz.data.types: mashumaro;
# featurizer v2: numba with its llvmlite). These versions, installed --no-deps next to this
# torch 2.13, were checked to import Boltz2, featurizerv2 and the inference data module.
BOLTZ_MODULES = {"boltz": "boltz==2.2.1", "pytorch_lightning": "pytorch-lightning==2.6.6",
                 "lightning_utilities": "lightning-utilities==0.15.3", "torchmetrics": "torchmetrics==1.9.0",
                 "mashumaro": "mashumaro==3.23", "numba": "numba==0.68.0 llvmlite==0.50.0"}


def boltz_cache_dir(cfg=None) -> Path:
    """Boltz's cache folder as ``boltz predict`` resolves it: ``$BOLTZ_CACHE``, else ``~/.boltz``
    (``boltz_cache=`` of the benchmark config overrides both)."""
    given = cfg.get("boltz_cache") if cfg is not None else None
    return Path(given or os.environ.get("BOLTZ_CACHE") or "~/.boltz").expanduser()


def boltz_missing(cfg=None) -> list[str]:
    """What full Boltz-2 inference lacks here: packages, and the CCD molecule data ``mols/``
    (one pickled RDKit molecule per CCD code: ``boltz predict`` downloads and unpacks mols.tar
    into the cache folder; the featuriser reads every residue's atoms from it)."""
    missing = [f"Python package {mod} (pip install --no-deps {pip})" for mod, pip in BOLTZ_MODULES.items()
               if importlib.util.find_spec(mod) is None]
    mols = boltz_cache_dir(cfg) / "mols"
    if not (mols / "ALA.pkl").is_file():
        missing.append(f"Boltz's CCD molecule data: no {mols}/ALA.pkl (boltz predict downloads mols.tar and unpacks "
                       f"it to {mols}; offline, put it there or set BOLTZ_CACHE / boltz_cache=)")
    return missing


class BoltzHost(StructureHost):
    """Boltz-2 (boltz 2.2.1): full inference is not available in the benchmark. What it would
    need is checked first (:func:`boltz_missing`), so that the error names what is missing:
    the packages of :data:`BOLTZ_MODULES` (with them the ``Boltz2`` module and Boltz's
    featuriser import), and Boltz's CCD molecule data ``mols/`` (a download: its featuriser reads
    every residue's atoms and reference conformer from it). Still to do for a runner: Boltz's
    features from its own parser / tokeniser / featuriser (with ``mols/``; for the canonical
    residues it could be made offline as RDKit molecules from biotite's CCD, as
    featurize.py does for the other hosts), and a tiny ``Boltz2`` hyper-parameter preset for a
    CPU (the released ones come with the checkpoint). Random stand-ins for Boltz's ~80 feature
    keys would not be a faithful Boltz-2 inference, so none are made."""

    name = "boltz"

    def check(self, cfg) -> None:
        missing = boltz_missing(cfg)
        if missing:
            raise HostUnavailable("host=boltz: full Boltz-2 inference cannot run here; missing: " + "; ".join(missing)
                                  + ". (patch_model's Boltz-2 adapter itself needs none of these.)")
        raise HostUnavailable("host=boltz: full Boltz-2 inference (its featuriser + the Boltz2 module) is not wired "
                              "into the structure benchmark yet; host=protenix and host=openfold3 are")


HOSTS: dict[str, type[StructureHost]] = {"protenix": ProtenixHost, "openfold3": OpenFold3Host, "boltz": BoltzHost}


def get_host(name: str) -> StructureHost:
    if name not in HOSTS:
        raise ValueError(f"unknown host={name!r}; known: {', '.join(HOSTS)}")
    return HOSTS[name]()


__all__ = [
    "HOSTS",
    "PHASES",
    "BoltzHost",
    "HostUnavailable",
    "InputError",
    "OpenFold3Host",
    "ProtenixHost",
    "StructureHost",
    "best_protenix_kernels",
    "boltz_cache_dir",
    "boltz_missing",
    "get_host",
]
