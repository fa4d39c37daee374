"""Protenix's architecture presets and builders.

Protenix presets:

* ``tiny`` — the CPU size used by tests and demos (issue 5 fixes these settings exactly):
  Protenix's base inference configs with :data:`PROTENIX_TINY` as command-line overrides;
* ``base`` — ``protenix_base_default_v1.0.0`` (c_z 128, 48 Pairformer blocks);
* ``v2`` — ``protenix-v2`` (c_z 256, 8 triangle heads);
* any other model name of Protenix's ``configs.configs_model_type.model_configs``.

The configs are merged the way Protenix's ``runner/inference.py`` merges them (base + data +
inference configs, then the model's specifics, then the overrides), on deep copies: the
package's module-level dicts are never modified.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from ..presets import PresetError

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


def _has_dotted_key(config: Mapping[str, Any], key: str) -> bool:
    node: Any = config
    for part in str(key).split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


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
    for key in dict(overrides or {}):  # Protenix's argparse would print its whole usage and exit
        if not _has_dotted_key(merged, key):
            raise PresetError(
                f"overrides: {key!r} is not a Protenix setting (e.g. model.N_cycle, sample_diffusion.N_step)"
            )
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


# the block benchmark's kernel switches (bench/blocks.py): name -> keyword arguments of the block's forward
BLOCK_KERNELS: dict[str, dict[str, Any]] = {
    "cuequivariance": dict(triangle_attention="cuequivariance", triangle_multiplicative="cuequivariance"),
    "triattention": dict(triangle_attention="triattention", triangle_multiplicative="torch"),
    "torch": dict(triangle_attention="torch", triangle_multiplicative="torch"),
}


def build_block(cfg, width: str = "v1"):
    """One real-size ``PairformerBlock`` for the block benchmark (bench/blocks.py) and its call
    ``call(block, s, z, token_mask, pair_mask, kernel_kwargs)``: widths from ``cfg`` (c_s, c_z,
    single_heads, tri_heads, tri_head_dim); ``width="v2"``: Protenix v2's (c_z 256, twice the
    triangle heads, ``hidden_scale_up``). Weights as built (the caller randomises them)."""
    from protenix.model.modules.pairformer import PairformerBlock

    block = PairformerBlock(
        n_heads=cfg.single_heads,
        c_z=256 if width == "v2" else cfg.c_z,
        c_s=cfg.c_s,
        c_hidden_pair_att=cfg.tri_head_dim,
        no_heads_pair=cfg.tri_heads * (2 if width == "v2" else 1),
        hidden_scale_up=width == "v2",
    )

    def call(block, s, z, token, pair, kw):
        return block(s, z, pair, **kw)

    return block, call


def build_model(
    preset: str, *, hyper_parameters: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
):
    """The model that conversion and fine-tuning build (``convert.build_model``): ``build_protenix``
    of ``preset`` with the fastest triangle kernels installed for its unpatched modules
    (``structure.best_protenix_kernels``: Protenix's default, cuEquivariance, is not always
    installed) and ``overrides`` (more Protenix settings) last. ``hyper_parameters``: unused."""
    import torch

    from .structure import best_protenix_kernels

    cuda = torch.cuda.is_available()
    settings = {**best_protenix_kernels(torch.device("cuda" if cuda else "cpu")), **dict(overrides or {})}
    return build_protenix(preset, settings, cpu=not cuda)[0]


def model_key_prefix(state_dict: Mapping[str, Any], preset: str) -> str:
    """The prefix of ``build_model(preset)``'s keys in a checkpoint's state dict: "" (the full model)."""
    return ""
