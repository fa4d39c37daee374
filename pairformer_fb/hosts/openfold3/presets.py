"""OpenFold3's architecture presets (:func:`openfold3_config`): ``tiny`` (CPU) and ``default``
(the released model's config), and :func:`build_openfold3`."""

from __future__ import annotations

import copy

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
