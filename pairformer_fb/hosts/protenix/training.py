"""What fine-tuning (``convert/finetune.py``, ``convert/training_data.py``) needs of Protenix:
the crop of an unbatched feature dict to contiguous tokens (``crop_features``, the feature keys by
their token / atom axes), the trunk's forward with gradients (``protenix_trunk``) and the module of
a recycling cycle worth a CUDA graph (``recycling_graph_modules``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch

# Protenix feature keys by their token / atom axes (featurize.protenix_features' output)
TOKEN_KEYS = (
    "token_index",
    "residue_index",
    "asym_id",
    "entity_id",
    "sym_id",
    "restype",
    "has_frame",
    "profile",
    "deletion_mean",
)
TOKEN_PAIR_KEYS = ("token_bonds",)
MSA_KEYS = ("msa", "has_deletion", "deletion_value")  # [n_msa, n_token]
ATOM_KEYS = (
    "ref_pos",
    "ref_mask",
    "ref_element",
    "ref_charge",
    "ref_atom_name_chars",
    "atom_to_tokatom_idx",
    "is_protein",
    "is_ligand",
    "is_dna",
    "is_rna",
    "pae_rep_atom_mask",
    "plddt_m_rep_atom_mask",
    "distogram_rep_atom_mask",
    "mol_id",
    "entity_mol_id",
    "mol_atom_index",
)
ATOM_TOKEN_INDEX_KEYS = ("atom_to_token_idx", "ref_space_uid")  # atom -> token index: shifted by the crop
SCALAR_KEYS = (
    "prot_pair_num_alignments",
    "prot_unpair_num_alignments",
    "rna_pair_num_alignments",
    "rna_unpair_num_alignments",
)


def crop_features(feats: Mapping[str, torch.Tensor], start: int, size: int) -> dict[str, torch.Tensor]:
    """The features of the contiguous tokens ``start .. start + size`` (and their atoms) of an
    unbatched Protenix feature dict; ``token_index`` renumbered from 0, ``residue_index`` kept.
    Raises ValueError for a key it does not know (so that no feature is left uncropped)."""
    n_tok = feats["restype"].shape[0]
    stop = min(start + size, n_tok)
    if not 0 <= start < stop:
        raise ValueError(f"crop start={start} size={size} outside the {n_tok} tokens")
    known = set(TOKEN_KEYS + TOKEN_PAIR_KEYS + MSA_KEYS + ATOM_KEYS + ATOM_TOKEN_INDEX_KEYS + SCALAR_KEYS)
    unknown = sorted(set(feats) - known)
    if unknown:
        raise ValueError(f"crop_features: unknown feature key(s) {unknown}")
    if start == 0 and stop == n_tok:
        return dict(feats)
    tok = feats["atom_to_token_idx"]
    atoms = (tok >= start) & (tok < stop)
    out = {k: feats[k][start:stop] for k in TOKEN_KEYS}
    out["token_index"] = torch.arange(stop - start)
    out.update({k: feats[k][start:stop, start:stop] for k in TOKEN_PAIR_KEYS})
    out.update({k: feats[k][:, start:stop] for k in MSA_KEYS})
    out.update({k: feats[k][atoms] for k in ATOM_KEYS})
    out.update({k: feats[k][atoms] - start for k in ATOM_TOKEN_INDEX_KEYS})
    out.update({k: feats[k] for k in SCALAR_KEYS})
    return out


# model: a Protenix model, typed Any (its submodules and attributes are Protenix's)
def protenix_trunk(
    model: Any,
    feats: Mapping[str, torch.Tensor],
    n_cycle: int,
    *,
    grad: bool,
    on_cycle: Callable[[int], None] | None = None,
):
    """``(s_inputs, s, z)`` of the Protenix trunk (``get_pairformer_output``) on unbatched
    features, with ``n_cycle`` recycles; ``grad``: autograd in the last cycle (as Protenix trains),
    while every submodule stays in eval mode (no dropout). ``on_cycle(i)`` is called as recycling
    cycle i (0-based) starts, before any of its modules: a forward pre-hook on the host's
    ``layernorm_z_cycle``, the first module each cycle runs."""
    from protenix.model.protenix import update_input_feature_dict

    if getattr(model, "train_confidence_only", False):
        raise ValueError("the Protenix model has train_confidence_only set: its trunk would not train")
    feats = model.relative_position_encoding.generate_relp(dict(feats))
    feats = update_input_feature_dict(feats)
    was = model.training
    model.training = grad  # the root's flag only: get_pairformer_output enables grad in the last cycle
    # The host's activation checkpointing (blocks_per_ckpt) is off for the pass: its recompute in
    # backward would rerun the patched modules in the mode they have then ("lowrank" after
    # DistillLoss's "distill" pass), not the one of the forward. Only the factor networks (and
    # any unfrozen weights) need activations, so the memory it saved is small here.
    ckpt = {m: m.blocks_per_ckpt for m in model.modules() if getattr(m, "blocks_per_ckpt", None) is not None}
    hook = None
    if on_cycle is not None:
        cycles = itertools.count()
        hook = model.layernorm_z_cycle.register_forward_pre_hook(lambda module, args: on_cycle(next(cycles)))
    try:
        for m in ckpt:
            m.blocks_per_ckpt = None
        with torch.set_grad_enabled(grad):
            return model.get_pairformer_output(feats, N_cycle=n_cycle, inplace_safe=False, chunk_size=None)
    finally:
        if hook is not None:
            hook.remove()
        model.training = was
        for m, v in ckpt.items():
            m.blocks_per_ckpt = v


def recycling_graph_modules(model: Any) -> list[torch.nn.Module]:
    """The modules of a recycling cycle that fine-tuning CUDA-graphs in the cycles without
    gradients: the pairformer stack, 84 % of an exact cycle's ATen ops (base model, 32 tokens;
    benchmarks/session9/finetune_cycles_cpu/trunk_op_counts.txt). The MSA module (1,301 of the
    15,515 ops there) stays eager: it draws its MSA rows at random each cycle
    (``sample_msa_feature_dict_random_without_replacement``), a new shape each time."""
    return [model.pairformer_stack]


__all__ = ["crop_features", "protenix_trunk", "recycling_graph_modules"]
