"""OpenFold3 in the structure benchmark: its :class:`~pairformer_fb.hosts.structure_hosts.StructureHost`
(:class:`OpenFold3Host`)."""

from __future__ import annotations

import importlib.util
from importlib.metadata import version
from typing import ClassVar

from ..structure_hosts import StructureHost, auto_preset, finish_build


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
        from .featurize import openfold3_constants

        openfold3_constants()  # importable

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
        from openfold3.projects.of3_all_atom.model import OpenFold3

        from .presets import openfold3_config

        cpu = device.type == "cpu"
        preset = auto_preset(cfg, ckpt, "tiny" if cpu else "default")
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
        return finish_build(model, device, ckpt, cfg, preset, label, info)

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

    def schedule(self, model, values=None):
        shared = model.shared  # config.architecture.shared, read at every forward
        if values:
            shared.num_recycles = values["cycles"] - 1
            shared.diffusion.no_full_rollout_steps = values["steps"]
            shared.diffusion.no_full_rollout_samples = values["samples"]
        d = shared.diffusion
        return {
            "cycles": int(shared.num_recycles) + 1,
            "steps": int(d.no_full_rollout_steps),
            "samples": int(d.no_full_rollout_samples),
        }
