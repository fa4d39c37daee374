"""Protenix in the structure benchmark: its :class:`~pairformer_fb.hosts.structure_hosts.StructureHost`
(:class:`ProtenixHost`) and the fastest triangle kernels installed for it (:func:`best_protenix_kernels`)."""

from __future__ import annotations

import importlib.util

import torch

from ..structure_hosts import StructureHost, auto_preset, finish_build


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
        if cfg.get("overrides"):  # their names, before any work (the configs are cheap to compose)
            from .presets import protenix_configs

            protenix_configs(cfg.model if cfg.model != "auto" else "tiny", dict(cfg.overrides))

    def featurise(self, sample, cfg):
        from .featurize import protenix_features

        return protenix_features(sample, msa_dir=cfg.msa_dir, seed=cfg.seed)

    def build(self, cfg, device, ckpt):
        from .presets import build_protenix

        cpu = device.type == "cpu"
        preset = auto_preset(cfg, ckpt, "tiny" if cpu else "base")
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
        return finish_build(model, device, ckpt, cfg, preset, configs.model_name, info)

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

    def schedule(self, model, values=None):
        sd = model.configs.sample_diffusion
        if values:
            model.N_cycle = values["cycles"]  # read by Protenix.forward in inference mode
            sd.N_step, sd.N_sample = values["steps"], values["samples"]
        return {"cycles": int(model.N_cycle), "steps": int(sd.N_step), "samples": int(sd.N_sample)}
