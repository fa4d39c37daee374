"""Boltz-2 in the structure benchmark: its :class:`~pairformer_fb.hosts.structure_hosts.StructureHost`
(:class:`BoltzHost`), the packages its full inference needs (:data:`BOLTZ_MODULES`,
:func:`boltz_missing`) and its cache folder (:func:`boltz_cache_dir`)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from ..structure_hosts import HostUnavailable, StructureHost, finish_build

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
    diffusion_samples = 1  # Boltz2.forward's diffusion_samples (all in parallel); the ladder sets 5

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
        from .featurize import boltz_features, boltz_molecules

        if not hasattr(self, "_mols"):
            self._mols, source = boltz_molecules(getattr(self, "_mols_dir", None))
            self.features_note = (
                "Boltz-2's own features (its parser, tokeniser and featuriser v2; molecules: "
                f"{source}), single-sequence MSA unless msa_dir is given, no templates"
            )
        return boltz_features(sample, self._mols, seed=cfg.seed, msa_dir=cfg.msa_dir)

    def build(self, cfg, device, ckpt):
        from .presets import BOLTZ2_TINY, build_boltz2

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
            "diffusion_samples": self.diffusion_samples,
        }
        return finish_build(model, device, ckpt, cfg, preset, "Boltz2", info)

    def predict(self, model, feats):
        out = model(
            dict(feats),
            recycling_steps=self.recycling_steps,
            num_sampling_steps=self.sampling_steps,
            diffusion_samples=self.diffusion_samples,
            max_parallel_samples=self.diffusion_samples,
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

    def schedule(self, model, values=None):
        if values:  # predict passes these to Boltz2.forward
            self.recycling_steps = values["cycles"] - 1
            self.sampling_steps, self.diffusion_samples = values["steps"], values["samples"]
        return {"cycles": self.recycling_steps + 1, "steps": self.sampling_steps, "samples": self.diffusion_samples}
