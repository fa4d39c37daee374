"""OpenFold3's architecture presets (:func:`openfold3_config`): ``tiny`` (CPU) and ``default``
(the released model's config), and :func:`build_openfold3`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..presets import PresetError

OPENFOLD3_PRESETS = ("tiny", "default")


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


# the block benchmark's kernel switches (bench/blocks.py): name -> keyword arguments of the block's forward
BLOCK_KERNELS: dict[str, dict[str, Any]] = {
    "triton": dict(use_triton_triangle_kernels=True),
    "cueq": dict(use_cueq_triangle_kernels=True),
    "torch": dict(),
}


def build_block(cfg, width: str = "v1"):
    """One real-size ``PairFormerBlock`` for the block benchmark (bench/blocks.py) and its call
    ``call(block, s, z, token_mask, pair_mask, kernel_kwargs)``: widths from ``cfg`` (c_s, c_z,
    single_heads, tri_heads, tri_head_dim), OpenFold3's defaults otherwise; ``width`` is
    Protenix's only. Weights as built (the caller randomises them)."""
    from openfold3.core.model.latent.pairformer import PairFormerBlock

    block = PairFormerBlock(
        c_s=cfg.c_s,
        c_z=cfg.c_z,
        c_hidden_pair_bias=cfg.c_s // cfg.single_heads,
        no_heads_pair_bias=cfg.single_heads,
        c_hidden_mul=128,
        c_hidden_pair_att=cfg.tri_head_dim,
        no_heads_pair=cfg.tri_heads,
        transition_type="swiglu",
        transition_n=4,
        pair_dropout=0.25,
        fuse_projection_weights=False,
        inf=1e9,
    )

    def call(block, s, z, token, pair, kw):
        return block(s, z, token, pair, **kw)

    return block, call


def build_model(
    preset: str, *, hyper_parameters: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
):
    """The model that conversion builds (``convert.build_model``): ``build_openfold3(preset)``.
    ``overrides`` are Protenix's alone; ``hyper_parameters``: unused."""
    if overrides:
        raise ValueError("overrides are Protenix settings; host 'openfold3' takes none")
    return build_openfold3(preset)


def model_key_prefix(state_dict: Mapping[str, Any], preset: str) -> str:
    """The prefix of ``build_model(preset)``'s keys in a checkpoint's state dict: "" (the full model)."""
    return ""
