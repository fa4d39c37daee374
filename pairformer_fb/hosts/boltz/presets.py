"""Boltz-2's presets: ``trunk`` (:func:`build_boltz_trunk`), the trunk Pairformer built from a
checkpoint's ``hyper_parameters`` (for conversion; needs no pytorch_lightning); the structure
benchmark's full ``Boltz2`` (:func:`build_boltz2`: :data:`BOLTZ2_TINY` or a checkpoint's
``hyper_parameters``) needs pytorch_lightning and torchmetrics."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..presets import PresetError

BOLTZ_PRESETS = ("trunk",)


def build_boltz_trunk(hyper_parameters: Mapping[str, Any] | None):
    """Boltz-2's trunk Pairformer (``boltz.model.layers.pairformer.PairformerModule``) as
    ``Boltz2.__init__`` builds it from a checkpoint's ``hyper_parameters`` (``token_s``,
    ``token_z``, ``pairformer_args``; None, a checkpoint without them: a PresetError). The full
    ``Boltz2`` Lightning module needs pytorch_lightning; the trunk alone does not."""
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


# the block benchmark's kernel switches (bench/blocks.py): name -> keyword arguments of the layer's forward
BLOCK_KERNELS: dict[str, dict[str, Any]] = {"use_kernels": dict(use_kernels=True), "torch": dict(use_kernels=False)}


def build_block(cfg, width: str = "v1"):
    """One real-size Boltz-2 ``PairformerLayer`` (v2) for the block benchmark (bench/blocks.py)
    and its call ``call(block, s, z, token_mask, pair_mask, kernel_kwargs)``: widths from
    ``cfg`` (c_s, c_z, single_heads, tri_heads, tri_head_dim); ``width`` is Protenix's only.
    Weights as built (the caller randomises them)."""
    from boltz.model.layers.pairformer import PairformerLayer

    block = PairformerLayer(
        cfg.c_s,
        cfg.c_z,
        num_heads=cfg.single_heads,
        dropout=0.0,
        pairwise_head_width=cfg.tri_head_dim,
        pairwise_num_heads=cfg.tri_heads,
        v2=True,
    )

    def call(block, s, z, token, pair, kw):
        return block(s, z, token, pair, **kw)

    return block, call


def build_model(
    preset: str, *, hyper_parameters: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
):
    """The model that conversion builds (``convert.build_model``): preset ``trunk``, the trunk
    Pairformer of the checkpoint's ``hyper_parameters`` (``build_boltz_trunk``). ``overrides``
    are Protenix's alone."""
    if overrides:
        raise ValueError("overrides are Protenix settings; host 'boltz' takes none")
    if preset not in BOLTZ_PRESETS:
        raise PresetError(f"unknown Boltz-2 preset model={preset!r}; known: {', '.join(BOLTZ_PRESETS)}")
    return build_boltz_trunk(hyper_parameters)


def model_key_prefix(state_dict: Mapping[str, Any], preset: str) -> str:
    """The prefix of ``build_model(preset)``'s keys in a checkpoint's state dict: the trunk's path
    for preset ``trunk`` (``_orig_mod.``: a torch.compile'd trunk)."""
    if preset == "trunk":
        compiled = any(k.startswith("pairformer_module._orig_mod.") for k in state_dict)
        return "pairformer_module._orig_mod." if compiled else "pairformer_module."
    return ""
