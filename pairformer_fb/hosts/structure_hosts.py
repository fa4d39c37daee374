"""The host-specific parts of the structure benchmark (bench/structure.py), one class per host:
what ``host=`` names. A :class:`StructureHost` knows how to

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

import importlib.util
import os
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data.featurize import InputError, Sample

PHASES = ("input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other")


class HostUnavailable(RuntimeError):
    """A host whose full inference cannot run here (a missing package or data set)."""


def _load_weights(model, ckpt, preset: str, label: str, info: dict) -> None:
    """Load a host checkpoint's weights (its factor networks, if any, are the lowrank
    variant's: left out here) into ``model``, strictly; record it in ``info``."""
    from ..convert.checkpoint import FACTOR_KEY_MARK

    host_sd = {k: v for k, v in ckpt.state_dict.items() if FACTOR_KEY_MARK not in k}
    try:
        model.load_state_dict(host_sd, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint={ckpt.path} does not fit model={preset} ({label}): {str(e).splitlines()[0]} ..."
        ) from e
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
    of hosts/protenix/featurize.py. Phases: ``input_embedder``, ``msa_module``, ``get_pairformer_output``
    (recycling: template embedder + trunk Pairformer, input embedding and MSA module subtracted),
    diffusion = from the end of the trunk to the end of ``sample_diffusion`` (its caches and the
    sampling), ``run_confidence_head``."""

    name = "protenix"
    features_note = (
        "offline Protenix features (hosts/protenix/featurize.py): CCD atoms and ideal reference conformers "
        "(biotite), single-sequence MSA unless msa_dir is given, no templates"
    )
    KERNELS = ("auto", "torch", "cuequivariance", "triattention", "deepspeed")

    def check(self, cfg) -> None:
        if cfg.kernels not in self.KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(self.KERNELS)} for host=protenix, got {cfg.kernels!r}")

    def featurise(self, sample, cfg):
        from .protenix.featurize import protenix_features

        return protenix_features(sample, msa_dir=cfg.msa_dir, seed=cfg.seed)

    def build(self, cfg, device, ckpt):
        from .protenix.presets import build_protenix

        cpu = device.type == "cpu"
        preset = cfg.model if cfg.model != "auto" else ("tiny" if cpu else "base")
        if cfg.kernels == "auto":
            kernels = best_protenix_kernels(device)
        else:
            kernels = {
                "triangle_attention": cfg.kernels,
                "triangle_multiplicative": cfg.kernels if cfg.kernels in ("torch", "cuequivariance") else "torch",
            }
        overrides = {**kernels, **dict(cfg.get("overrides") or {})}
        model, configs = build_protenix(preset, overrides, cpu=cpu)
        info = {
            "host": "protenix",
            "preset": preset,
            "model_name": configs.model_name,
            "kernels": kernels,
            "overrides": dict(overrides),
            "checkpoint": None,
            "weights": "random",
        }
        return _finish(model, device, ckpt, cfg, preset, configs.model_name, info)

    def predict(self, model, feats):
        pred, _, _ = model(dict(feats), None, None, mode="inference")
        return pred["coordinate"][0]

    def phase_wraps(self, model):
        return [
            (model.input_embedder, "forward", "input_embedding", None),
            (model.msa_module, "forward", "msa_module", None),
            (model, "get_pairformer_output", "get_pairformer_output", "trunk_end"),
            (model, "sample_diffusion", "sample_diffusion", "diffusion_end"),
            (model, "run_confidence_head", "confidence_head", None),
        ]

    def phases(self, spans, stamps):
        embed, msa = spans.get("input_embedding", 0.0), spans.get("msa_module", 0.0)
        return {
            "input_embedding": embed,
            "msa_module": msa,
            "pairformer_trunk": spans["get_pairformer_output"] - embed - msa,
            "diffusion_sampling": stamps["diffusion_end"] - stamps["trunk_end"],  # caches + sampling
            "confidence_head": spans.get("confidence_head", 0.0),
        }


# ---------------------------------------------------------------------------------------------
# OpenFold3


def _set_dotted(config, key: str, value) -> None:
    """``config.a.b.c = value`` for key "a.b.c" of an ml_collections ConfigDict; an unknown key is
    an error naming it."""
    *path, last = key.split(".")
    node = config
    for i, p in enumerate(path):
        if p not in node:
            raise ValueError(f"overrides: OpenFold3's config has no {'.'.join(path[: i + 1])!r} (in {key!r})")
        node = node[p]
    if last not in node:
        raise ValueError(f"overrides: OpenFold3's config has no {key!r}")
    node[last] = value


class OpenFold3Host(StructureHost):
    """OpenFold3 0.5.0: ``model(batch)`` (``OpenFold3.forward`` in eval mode: ``run_trunk`` with
    ``num_recycles`` recycles, the full diffusion rollout ``sample_diffusion``, the auxiliary heads)
    on the offline features of ``hosts/openfold3/featurize.openfold3_features``. Phases: ``input_embedder``,
    ``msa_module_embedder`` + ``msa_module``, the rest of ``run_trunk`` (template embedder + trunk
    Pairformer over the recycles), ``sample_diffusion``, ``aux_heads`` (the confidence heads with
    their Pairformer, and the distogram head)."""

    name = "openfold3"
    features_note = (
        "offline OpenFold3 features (hosts/openfold3/featurize.py): CCD atoms and ideal reference "
        "conformers (biotite; OpenFold3 would use RDKit conformers of its CCD cache), "
        "single-sequence MSA unless msa_dir is given, no templates"
    )
    # kernels= -> OpenFold3's settings.memory.eval switches of the original's triangle attention
    KERNELS: ClassVar[dict[str, dict[str, bool]]] = {
        "torch": {},
        "triton": {"use_triton_triangle_kernels": True},
        "cuequivariance": {"use_cueq_triangle_kernels": True},
        "deepspeed": {"use_deepspeed_evo_attention": True},
    }

    def check(self, cfg) -> None:
        if cfg.kernels != "auto" and cfg.kernels not in self.KERNELS:
            raise ValueError(
                f"kernels must be auto or one of {', '.join(self.KERNELS)} for host=openfold3, got {cfg.kernels!r}"
            )
        if cfg.model not in ("auto", "tiny", "default"):
            raise ValueError(f"model must be auto, tiny or default for host=openfold3, got {cfg.model!r}")
        from .openfold3.featurize import openfold3_constants

        openfold3_constants()  # importable

    def featurise(self, sample, cfg):
        from .openfold3.featurize import openfold3_features

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
        from openfold3.projects.of3_all_atom.model import OpenFold3

        from .openfold3.presets import openfold3_config

        cpu = device.type == "cpu"
        preset = cfg.model if cfg.model != "auto" else ("tiny" if cpu else "default")
        config = openfold3_config(preset)
        kernels = self._kernels(cfg, device)
        switches = {
            "use_triton_triangle_kernels": False,
            "use_cueq_triangle_kernels": False,
            "use_deepspeed_evo_attention": False,
            "use_lma": False,
            **self.KERNELS[kernels],
        }
        overrides = {f"settings.memory.eval.{k}": v for k, v in switches.items()} | dict(cfg.get("overrides") or {})
        for k, v in overrides.items():
            _set_dotted(config, k, v)
        model = OpenFold3(config)
        label = f"OpenFold3 {version('openfold3')}"
        info = {
            "host": "openfold3",
            "preset": preset,
            "model_name": label,
            "kernels": {"triangle_attention": kernels},
            "overrides": overrides,
            "checkpoint": None,
            "weights": "random",
            "num_recycles": int(config.architecture.shared.num_recycles),
            "diffusion_steps": int(config.architecture.shared.diffusion.no_full_rollout_steps),
            "diffusion_samples": int(config.architecture.shared.diffusion.no_full_rollout_samples),
        }
        return _finish(model, device, ckpt, cfg, preset, label, info)

    def predict(self, model, feats):
        _, out = model(dict(feats))
        return out["atom_positions_predicted"][0, 0]  # [batch, sample, atom, 3]

    def phase_wraps(self, model):
        return [
            (model.input_embedder, "forward", "input_embedding", None),
            (model.msa_module_embedder, "forward", "msa_module", None),
            (model.msa_module, "forward", "msa_module", None),
            (model, "run_trunk", "run_trunk", None),
            (model.sample_diffusion, "forward", "diffusion_sampling", None),
            (model.aux_heads, "forward", "confidence_head", None),
        ]

    def phases(self, spans, stamps):
        embed, msa = spans.get("input_embedding", 0.0), spans.get("msa_module", 0.0)
        return {
            "input_embedding": embed,
            "msa_module": msa,
            "pairformer_trunk": spans["run_trunk"] - embed - msa,
            "diffusion_sampling": spans.get("diffusion_sampling", 0.0),
            "confidence_head": spans.get("confidence_head", 0.0),
        }


# ---------------------------------------------------------------------------------------------
# Boltz-2


# what full Boltz-2 inference needs beyond the boltz package's Pairformer (module -> pip spec):
# the Lightning module Boltz2 (boltz.model.models.boltz2) imports pytorch_lightning (which needs
# lightning_utilities) and torchmetrics; boltz's data pipeline: mashumaro (boltz.data.types),
# numba + llvmlite (featurizer v2), chembl_structure_pipeline and scikit-learn (+ joblib,
# threadpoolctl) (its schema / mmCIF parsers), click (the schema parser) and cloudpickle.
# requirements-hosts.txt pins them (--no-deps).
BOLTZ_MODULES = {
    "boltz": "boltz==2.2.1",
    "pytorch_lightning": "pytorch-lightning==2.6.6",
    "lightning_utilities": "lightning-utilities==0.15.3",
    "torchmetrics": "torchmetrics==1.9.0",
    "mashumaro": "mashumaro==3.23",
    "numba": "numba==0.68.0 llvmlite==0.50.0",
    "chembl_structure_pipeline": "chembl_structure_pipeline==1.2.4",
    "sklearn": "scikit-learn==1.6.1 joblib==1.6.0 threadpoolctl==3.7.0",
    "click": "click==8.4.0",
    "cloudpickle": "cloudpickle==2.1.0",
}


def boltz_cache_dir(cfg=None) -> Path:
    """Boltz's cache folder as ``boltz predict`` resolves it: ``$BOLTZ_CACHE``, else ``~/.boltz``
    (``boltz_cache=`` of the benchmark config overrides both)."""
    given = cfg.get("boltz_cache") if cfg is not None else None
    return Path(given or os.environ.get("BOLTZ_CACHE") or "~/.boltz").expanduser()


def boltz_missing() -> list[str]:
    """The packages full Boltz-2 inference lacks here (:data:`BOLTZ_MODULES`)."""
    return [
        f"Python package {mod} (pip install --no-deps {pip})"
        for mod, pip in BOLTZ_MODULES.items()
        if importlib.util.find_spec(mod) is None
    ]


class BoltzHost(StructureHost):
    """Boltz-2 (boltz 2.2.1): ``Boltz2.forward(feats, recycling_steps, num_sampling_steps,
    diffusion_samples=1)`` as ``boltz predict`` runs it, on the features of Boltz's own parser,
    tokeniser and featuriser (``hosts/boltz/featurize.boltz_features``). Its CCD molecule data ``mols/``
    (normally downloaded into the cache folder) are used when present; otherwise the canonical
    residues are made from biotite's CCD (``hosts/boltz/featurize.ccd_rdkit_mol``), which the report says.
    MSA: single-sequence unless ``msa_dir=`` holds an entity's A3M, which Boltz's own
    ``parse_a3m`` reads (unpaired, as ``boltz predict`` with a custom A3M).
    Presets: ``tiny`` (:data:`hosts.boltz.presets.BOLTZ2_TINY`) or, with ``checkpoint=`` a Boltz-2 Lightning
    checkpoint, its ``hyper_parameters``. Phases: ``input_embedder``, ``msa_module``, the trunk
    up to the last ``pairformer_module`` call (recycling), from there to the end of
    ``structure_module.sample`` (distogram head, diffusion conditioning, sampling),
    ``confidence_module``."""

    name = "boltz"

    def check(self, cfg) -> None:
        missing = boltz_missing()
        if missing:
            raise HostUnavailable(
                "host=boltz: full Boltz-2 inference cannot run here; missing: "
                + "; ".join(missing)
                + ". (patch_model's Boltz-2 adapter itself needs none of these.)"
            )
        if cfg.model not in ("auto", "tiny", "checkpoint"):
            raise ValueError(f"model must be auto, tiny or checkpoint for host=boltz, got {cfg.model!r}")
        if cfg.model == "checkpoint" and not cfg.checkpoint:
            raise ValueError(
                "model=checkpoint (host=boltz) builds Boltz-2 from a checkpoint's hyper_parameters: give checkpoint="
            )
        if cfg.kernels not in ("auto", "torch"):
            raise ValueError(f"kernels must be auto or torch for host=boltz, got {cfg.kernels!r}")
        self._mols_dir = boltz_cache_dir(cfg) / "mols"

    def featurise(self, sample, cfg):
        from .boltz.featurize import boltz_features, boltz_molecules

        if not hasattr(self, "_mols"):
            self._mols, source = boltz_molecules(getattr(self, "_mols_dir", None))
            self.features_note = (
                "Boltz-2's own features (its parser, tokeniser and featuriser v2; molecules: "
                f"{source}), single-sequence MSA unless msa_dir is given, no templates"
            )
        return boltz_features(sample, self._mols, seed=cfg.seed, msa_dir=cfg.msa_dir)

    def build(self, cfg, device, ckpt):
        from .boltz.presets import BOLTZ2_TINY, build_boltz2

        preset = cfg.model if cfg.model != "auto" else ("checkpoint" if ckpt is not None else "tiny")
        hp = BOLTZ2_TINY
        if preset == "checkpoint":
            hp = ckpt.container.get("hyper_parameters") if isinstance(ckpt.container, Mapping) else None
            if not hp:
                raise ValueError(
                    f"checkpoint={ckpt.path} has no hyper_parameters to build Boltz-2 from (model=checkpoint)"
                )
        ov = dict(cfg.get("overrides") or {})
        for k in ov:
            if k not in ("recycling_steps", "sampling_steps"):
                raise ValueError(f"overrides: host=boltz takes recycling_steps and sampling_steps, got {k!r}")
        model = build_boltz2(hp)
        self.recycling_steps = int(ov.get("recycling_steps", 1 if preset == "tiny" else 3))
        self.sampling_steps = int(ov.get("sampling_steps", 2 if preset == "tiny" else 200))
        info = {
            "host": "boltz",
            "preset": preset,
            "model_name": f"Boltz-2 (boltz {version('boltz')})",
            "kernels": {"triangle_attention": "torch"},
            "overrides": ov,
            "checkpoint": None,
            "weights": "random",
            "recycling_steps": self.recycling_steps,
            "diffusion_steps": self.sampling_steps,
            "diffusion_samples": 1,
        }
        return _finish(model, device, ckpt, cfg, preset, "Boltz2", info)

    def predict(self, model, feats):
        out = model(
            dict(feats),
            recycling_steps=self.recycling_steps,
            num_sampling_steps=self.sampling_steps,
            diffusion_samples=1,
            max_parallel_samples=1,
            run_confidence_sequentially=True,
        )
        return out["sample_atom_coords"][0][feats["atom_pad_mask"][0].bool()]

    def phase_wraps(self, model):
        return [
            (model.input_embedder, "forward", "input_embedding", "embed_end"),
            (model.msa_module, "forward", "msa_module", None),
            (model.pairformer_module, "forward", "pairformer", "trunk_end"),
            (model.structure_module, "sample", "sample", "diffusion_end"),
            (model.confidence_module, "forward", "confidence_head", None),
        ]

    def phases(self, spans, stamps):
        msa = spans.get("msa_module", 0.0)
        return {
            "input_embedding": spans.get("input_embedding", 0.0),
            "msa_module": msa,
            "pairformer_trunk": stamps["trunk_end"] - stamps["embed_end"] - msa,
            "diffusion_sampling": stamps["diffusion_end"] - stamps["trunk_end"],
            "confidence_head": spans.get("confidence_head", 0.0),
        }


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
