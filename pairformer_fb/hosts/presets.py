"""Host architecture presets: ``model=PRESET`` in the scripts (conversion, fine-tuning,
benchmark) builds the real host model from its package's own configs.

Protenix presets:

* ``tiny`` — the CPU size used by tests and demos (issue 5 fixes these settings exactly):
  Protenix's base inference configs with :data:`PROTENIX_TINY` as command-line overrides;
* ``base`` — ``protenix_base_default_v1.0.0`` (c_z 128, 48 Pairformer blocks);
* ``v2`` — ``protenix-v2`` (c_z 256, 8 triangle heads);
* any other model name of Protenix's ``configs.configs_model_type.model_configs``.

The configs are merged the way Protenix's ``runner/inference.py`` merges them (base + data +
inference configs, then the model's specifics, then the overrides), on deep copies: the
package's module-level dicts are never modified.

OpenFold3 presets (:func:`openfold3_config`): ``tiny`` (CPU) and ``default`` (the released
model's config). Boltz-2 preset ``trunk`` (:func:`build_boltz_trunk`): the trunk Pairformer
built from a checkpoint's ``hyper_parameters`` (for conversion; needs no pytorch_lightning);
the structure benchmark's full ``Boltz2`` (:func:`build_boltz2`: :data:`BOLTZ2_TINY` or a
checkpoint's ``hyper_parameters``) needs pytorch_lightning and torchmetrics.
:data:`DEFAULT_PRESETS` names each host's default.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# issue 5's tiny Protenix: exactly these settings
PROTENIX_TINY: dict[str, Any] = {
    "c_s": 64,
    "c_z": 32,
    "c_token": 64,
    "c_s_inputs": 129,
    "c_atom": 32,
    "n_blocks": 2,
    "model.pairformer.n_heads": 4,
    "model.N_cycle": 1,
    "model.msa_module.n_blocks": 1,
    "model.msa_module.c_m": 16,
    "model.diffusion_module.c_token": 64,
    "model.diffusion_module.transformer.n_blocks": 1,
    "model.diffusion_module.transformer.n_heads": 4,
    "model.diffusion_module.atom_encoder.n_blocks": 1,
    "model.diffusion_module.atom_decoder.n_blocks": 1,
    "model.confidence_head.n_blocks": 1,
    "sample_diffusion.N_step": 2,
    "sample_diffusion.N_sample": 1,
}

# what a CPU needs: fp32, no activation checkpointing, the torch paths of the kernel switches
PROTENIX_CPU: dict[str, Any] = {
    "dtype": "fp32",
    "blocks_per_ckpt": "null",
    "triangle_attention": "torch",
    "triangle_multiplicative": "torch",
}

# preset -> (Protenix model name, overrides)
PROTENIX_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("protenix_base_default_v1.0.0", PROTENIX_TINY),
    "base": ("protenix_base_default_v1.0.0", {}),
    "v2": ("protenix-v2", {}),
}


class PresetError(ValueError):
    """An unknown preset, or a host package that cannot be imported."""


def _import_protenix_configs():
    os.environ.setdefault("LAYERNORM_TYPE", "torch")  # on a CPU Protenix would build a CUDA layer norm
    try:
        from configs.configs_base import configs as base  # shipped with protenix
        from configs.configs_data import data_configs
        from configs.configs_inference import inference_configs
        from configs.configs_model_type import model_configs
        from protenix.config.config import parse_configs
    except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
        raise PresetError(
            f"protenix cannot be imported ({type(e).__name__}: {e}); install it with "
            "`make install` (pip install --no-deps -r requirements-hosts.txt)"
        ) from e
    return base, data_configs, inference_configs, model_configs, parse_configs


def protenix_presets() -> list[str]:
    """The names ``model=`` accepts for Protenix."""
    *_, model_configs, _ = _import_protenix_configs()
    return sorted(set(PROTENIX_PRESETS) | set(model_configs))


def _deep_update(d: dict, u: Mapping) -> dict:
    for k, v in u.items():
        if isinstance(v, Mapping) and isinstance(d.get(k), Mapping):
            _deep_update(d[k], v)
        else:
            d[k] = v
    return d


def protenix_configs(model: str = "tiny", overrides: Mapping[str, Any] | None = None, *, cpu: bool = True):
    """Protenix's inference configs (a ConfigDict) for preset ``model``.

    ``overrides``: more dotted-key settings (``{"model.N_cycle": 4}``), applied last.
    ``cpu=True`` adds :data:`PROTENIX_CPU` (fp32, torch kernels); with ``cpu=False`` the host's
    own defaults stay (bf16, its cuEquivariance kernels) unless overridden.
    """
    base, data_configs, inference_configs, model_configs, parse_configs = _import_protenix_configs()
    if model in PROTENIX_PRESETS:
        name, preset = PROTENIX_PRESETS[model]
    elif model in model_configs:
        name, preset = model, {}
    else:
        raise PresetError(f"unknown Protenix preset model={model!r}; known: {', '.join(protenix_presets())}")
    merged = copy.deepcopy({**base, "data": data_configs, **inference_configs})
    _deep_update(merged, copy.deepcopy(model_configs[name]))
    settings = {"model_name": name, **preset, **(PROTENIX_CPU if cpu else {}), **dict(overrides or {})}
    args = " ".join(f"--{k} {v}" for k, v in settings.items())
    return parse_configs(merged, args, fill_required_with_null=True)


def build_protenix(model: str = "tiny", overrides: Mapping[str, Any] | None = None, *, cpu: bool = True):
    """The Protenix model (``protenix.model.protenix.Protenix``) of preset ``model``, with the
    host's own initialisation, and its configs: ``(model, configs)``."""
    configs = protenix_configs(model, overrides, cpu=cpu)
    import contextlib
    import io

    from protenix.model.protenix import Protenix

    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints its schedulers' settings
        model = Protenix(configs)
    return model, configs


# ---------------------------------------------------------------------------------------------
# OpenFold3 and Boltz-2

OPENFOLD3_PRESETS = ("tiny", "default")
BOLTZ_PRESETS = ("trunk",)
# the preset ``model=`` picks when none is given
DEFAULT_PRESETS = {"protenix": "base", "openfold3": "default", "boltz": "trunk"}


def openfold3_config(model: str = "tiny"):
    """OpenFold3's model config (an ml_collections ConfigDict, a deep copy of the package's):

    * ``default`` — the package's ``of3_all_atom`` model config (the released model's sizes);
    * ``tiny`` — the same shrunk for CPU tests and demos (c_s 32, c_z 16, 2 trunk Pairformer
      blocks, 1 recycle, 2 diffusion steps, 1 sample, small MSA / template / confidence stacks,
      the host's torch triangle kernels).
    """
    if model not in OPENFOLD3_PRESETS:
        raise PresetError(f"unknown OpenFold3 preset model={model!r}; known: {', '.join(OPENFOLD3_PRESETS)}")
    try:
        from openfold3.projects.of3_all_atom.config.model_config import model_config
    except Exception as e:  # noqa: BLE001
        raise PresetError(
            f"openfold3 cannot be imported ({type(e).__name__}: {e}); install it with "
            "`make install` (pip install --no-deps -r requirements-hosts.txt)"
        ) from e
    c = copy.deepcopy(model_config)
    if model == "default":
        return c
    a = c.architecture
    a.shared.c_s = 32
    a.shared.c_z = 16
    a.input_embedder.atom_attn_enc.c_token = 32  # c_token_embedder; c_s_input = it + 65
    a.input_embedder.atom_attn_enc.c_atom = 16
    a.input_embedder.atom_attn_enc.c_atom_pair = 8
    a.diffusion_module.diffusion_module.c_token = 32  # c_token_diffusion
    a.msa.msa_module.c_m = 8
    a.template.c_t = 8
    a.shared.num_recycles = 1
    a.shared.diffusion.no_full_rollout_steps = 2
    a.shared.diffusion.no_full_rollout_samples = 1
    for enc in (a.input_embedder.atom_attn_enc, a.diffusion_module.atom_attn_enc, a.diffusion_module.atom_attn_dec):
        enc.c_hidden, enc.no_heads, enc.no_blocks = 8, 2, 1
    for p, n_blocks in ((a.pairformer, 2), (a.heads.pairformer_embedding.pairformer, 1)):
        p.no_blocks, p.c_hidden_pair_bias, p.no_heads_pair_bias = n_blocks, 8, 4
        p.c_hidden_mul, p.c_hidden_pair_att, p.no_heads_pair = 16, 8, 2
    m = a.msa.msa_module
    m.no_blocks, m.c_hidden_msa_att, m.no_heads_msa, m.c_hidden_opm = 1, 4, 2, 4
    m.c_hidden_mul, m.c_hidden_pair_att, m.no_heads_pair = 16, 8, 2
    t = a.template.template_pair_stack
    t.no_blocks, t.c_hidden_tri_att, t.c_hidden_tri_mul, t.no_heads = 1, 4, 8, 2
    d = a.diffusion_module.diffusion_transformer
    d.no_blocks, d.no_heads, d.c_hidden = 1, 2, 16
    c.settings.memory.eval.use_triton_triangle_kernels = False  # the host's torch path on CPU
    return c


def build_openfold3(model: str = "tiny"):
    """The OpenFold3 model (``openfold3.projects.of3_all_atom.model.OpenFold3``) of preset ``model``."""
    config = openfold3_config(model)
    from openfold3.projects.of3_all_atom.model import OpenFold3

    return OpenFold3(config)


def build_boltz_trunk(hyper_parameters: Mapping[str, Any]):
    """Boltz-2's trunk Pairformer (``boltz.model.layers.pairformer.PairformerModule``) as
    ``Boltz2.__init__`` builds it from a checkpoint's ``hyper_parameters`` (``token_s``,
    ``token_z``, ``pairformer_args``). The full ``Boltz2`` Lightning module needs
    pytorch_lightning; the trunk alone does not."""
    try:
        from boltz.model.layers.pairformer import PairformerModule
    except Exception as e:  # noqa: BLE001
        raise PresetError(
            f"boltz cannot be imported ({type(e).__name__}: {e}); install it with "
            "pip install --no-deps boltz==2.2.1 einops"
        ) from e
    if not isinstance(hyper_parameters, Mapping):
        raise PresetError(
            "Boltz-2 preset 'trunk' is built from the checkpoint's hyper_parameters, "
            "which this checkpoint does not have"
        )
    missing = [k for k in ("token_s", "token_z", "pairformer_args") if k not in hyper_parameters]
    if missing:
        raise PresetError(f"Boltz-2 preset 'trunk': the checkpoint's hyper_parameters lack {missing}")
    return PairformerModule(
        hyper_parameters["token_s"], hyper_parameters["token_z"], **dict(hyper_parameters["pairformer_args"])
    )


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-zero weights of a moderate scale (layer-norm scales around 1), in place.

    The hosts zero-initialise their output projections and gates, so a freshly built model's
    attention updates are exactly zero: every variant would agree trivially. Tests and the
    benchmark without a checkpoint use these weights instead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_((r * 0.7 / p.shape[-1] ** 0.5).to(p.dtype))
            elif name.endswith("weight"):  # layer-norm scales
                p.copy_((1.0 + 0.2 * r).to(p.dtype))
            else:
                p.copy_((0.2 * r).to(p.dtype))
    return module


# Boltz-2's full model (boltz.model.models.boltz2.Boltz2, a Lightning module: needs
# pytorch_lightning and torchmetrics) at a CPU size; the released sizes come with a checkpoint's
# hyper_parameters. Pairformer v2 blocks as the released model; the features' atom width 388.
_BOLTZ2_PAIRFORMER_TINY = {
    "num_blocks": 2,
    "num_heads": 4,
    "dropout": 0.0,
    "pairwise_head_width": 8,
    "pairwise_num_heads": 2,
    "v2": True,
}
BOLTZ2_TINY: dict[str, Any] = {
    "atom_s": 16,
    "atom_z": 8,
    "token_s": 32,
    "token_z": 16,
    "num_bins": 64,
    "atom_feature_dim": 388,
    "training_args": {},
    "validation_args": {},
    "diffusion_loss_args": {},
    "embedder_args": {
        "atom_encoder_depth": 1,
        "atom_encoder_heads": 2,
        "add_method_conditioning": True,
        "add_modified_flag": True,
        "add_cyclic_flag": True,
        "add_mol_type_feat": True,
    },
    "msa_args": {
        "msa_s": 8,
        "msa_blocks": 1,
        "msa_dropout": 0.0,
        "z_dropout": 0.0,
        "pairwise_head_width": 8,
        "pairwise_num_heads": 2,
    },
    "pairformer_args": _BOLTZ2_PAIRFORMER_TINY,
    "score_model_args": {
        "sigma_data": 16,
        "dim_fourier": 16,
        "atom_encoder_depth": 1,
        "atom_encoder_heads": 2,
        "token_transformer_depth": 1,
        "token_transformer_heads": 2,
        "atom_decoder_depth": 1,
        "atom_decoder_heads": 2,
        "conditioning_transition_layers": 1,
    },
    "diffusion_process_args": {"num_sampling_steps": 2},
    "confidence_model_args": {
        "pairformer_args": {**_BOLTZ2_PAIRFORMER_TINY, "num_blocks": 1},
        "num_dist_bins": 64,
        "add_s_to_z_prod": True,
        "add_s_input_to_s": True,
        "add_z_input_to_z": True,
        "confidence_args": {"num_plddt_bins": 50, "num_pde_bins": 64, "num_pae_bins": 64},
    },
    "confidence_prediction": True,
    "validate_structure": False,
}
# boltz predict's defaults (boltz.main.BoltzSteeringParams without potentials)
BOLTZ2_STEERING = {
    "fk_steering": False,
    "num_particles": 3,
    "fk_lambda": 4.0,
    "fk_resampling_interval": 3,
    "physical_guidance_update": False,
    "contact_guidance_update": True,
    "num_gd_steps": 20,
}


def build_boltz2(hyper_parameters: Mapping[str, Any] | None = None):
    """Boltz-2's full model (``Boltz2``, eval-ready) of ``hyper_parameters`` (None: :data:`BOLTZ2_TINY`),
    with ``boltz predict``'s steering defaults and no training validators."""
    try:
        from boltz.model.models.boltz2 import Boltz2
    except Exception as e:  # noqa: BLE001
        raise PresetError(
            f"boltz's Boltz2 cannot be imported ({type(e).__name__}: {e}); install "
            "requirements-hosts.txt (pytorch-lightning, torchmetrics, ... with --no-deps)"
        ) from e
    hp = copy.deepcopy(dict(hyper_parameters or BOLTZ2_TINY))
    hp.pop("validators", None)
    hp.update(validate_structure=False, steering_args=hp.get("steering_args") or dict(BOLTZ2_STEERING))
    return Boltz2(**hp)
