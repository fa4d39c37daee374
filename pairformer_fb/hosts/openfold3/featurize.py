"""OpenFold3's offline featurisation (``openfold3_features``) and the synthetic features around a bare
sequence that the conversion's samples use (``synthetic_features``); the shared parts (samples,
atoms, tokens, MSA) are in ``pairformer_fb.data.featurize``."""

from __future__ import annotations

import os

import numpy as np
import torch

from ...data.featurize import (
    InputError,
    Sample,
    atom_name_chars,
    build_atoms,
    protein_1to3,
    reference_positions,
    tokens,
    unpaired_msa,
)


def openfold3_constants():
    try:
        from openfold3.core.data.resources.residues import STANDARD_RESIDUES_WITH_GAP_3
        from openfold3.core.data.resources.token_atom_constants import (
            TOKEN_NAME_TO_ATOM_NAMES,
        )
    except Exception as e:  # noqa: BLE001
        raise ImportError(
            f"openfold3 cannot be imported ({type(e).__name__}: {e}); install it with `make install`"
        ) from e
    return list(STANDARD_RESIDUES_WITH_GAP_3), TOKEN_NAME_TO_ATOM_NAMES


def openfold3_features(
    sample: Sample, *, msa_dir: str | os.PathLike | None = None, seed: int = 0, rotate_ref: bool = True
):
    """OpenFold3's inference features of ``sample`` (a batch of one, CPU tensors) and the
    sample's atoms (a biotite AtomArray in the features' atom order), built offline the way
    OpenFold3 0.5.0's featurisers (``core/data/pipelines/featurization/{structure,conformer,
    msa,template}.py``) encode them, from the same CCD atoms as ``protenix_features``:

    * tokens: ``restype`` one-hot over ``STANDARD_RESIDUES_WITH_GAP_3`` (32, int32);
      ``residue_index`` 1-based per chain, ``asym_id`` / ``entity_id`` / ``sym_id`` 1-based.
    * atoms: each residue's heavy atoms in OpenFold3's ``TOKEN_NAME_TO_ATOM_NAMES`` order (the
      CCD order without OXT: checked here); ``ref_pos`` the CCD ideal coordinates centred and
      randomly rotated per residue (seeded; OpenFold3 prefers an RDKit conformer of its CCD
      cache, a download); ``ref_element`` one-hot of atomic number - 1 (119);
      ``ref_atom_name_chars`` 4 x one-hot(ord(c) - 32, 64); ``ref_space_uid`` one per residue.
    * MSA: the query alone (or the A3M rows of ``msa_dir``, unpaired, as for Protenix);
      ``num_paired_seqs`` 0.
    * templates: none: one template slot, all masks 0 (residue type gap).
    """
    restypes, atom_names = openfold3_constants()
    rt_index = {r: i for i, r in enumerate(restypes)}
    atoms = build_atoms(sample, oxt=False)
    n_atom = atoms.array_length()
    tk = tokens(sample, atoms)
    n_tok = len(tk.name)
    for t_i, (a, b) in enumerate(zip(tk.starts, np.r_[tk.starts[1:], n_atom])):
        got = [str(n) for n in atoms.atom_name[a:b]]
        if got != list(atom_names[tk.name[t_i]]):
            raise InputError(
                f"{sample.name}: residue {tk.name[t_i]}'s CCD atoms {got} are not OpenFold3's "
                f"{list(atom_names[tk.name[t_i]])}"
            )
    ref_pos = reference_positions(atoms, tk.starts, seed, rotate_ref)
    one_to_three = protein_1to3()
    aa_to_id = {k: rt_index[v] for k, v in one_to_three.items()} | {"X": rt_index["UNK"], "-": rt_index["GAP"]}
    msa, deletions, profile, deletion_mean, _ = unpaired_msa(
        sample, msa_dir, rt_index, aa_to_id, rt_index["GAP"], len(restypes)
    )
    n_msa = msa.shape[0]
    restype_idx = torch.tensor([rt_index[r] for r in tk.name])
    n_per_tok = np.diff(np.r_[tk.starts, n_atom])
    numbers = [_atomic_number(str(e)) for e in atoms.element]
    names = [str(n) for n in atoms.atom_name]
    oh = torch.nn.functional.one_hot
    i32 = torch.int32
    t = torch.tensor
    n_templ = 1
    f = {
        "residue_index": t(tk.res, dtype=i32),
        "token_index": torch.arange(n_tok, dtype=i32),
        "asym_id": t(tk.chain, dtype=i32) + 1,
        "entity_id": t(tk.entity, dtype=i32) + 1,
        "sym_id": t(tk.sym, dtype=i32) + 1,
        "restype": oh(restype_idx, len(restypes)).to(i32),
        "is_protein": torch.ones(n_tok, dtype=i32),
        "is_dna": torch.zeros(n_tok, dtype=i32),
        "is_rna": torch.zeros(n_tok, dtype=i32),
        "is_ligand": torch.zeros(n_tok, dtype=i32),
        "is_atomized": torch.zeros(n_tok, dtype=i32),
        "ref_pos": torch.from_numpy(ref_pos).float(),
        "ref_mask": torch.ones(n_atom, dtype=i32),
        "ref_element": oh(t([z - 1 for z in numbers]), 119).to(i32),
        "ref_charge": torch.from_numpy(np.asarray(atoms.charge, dtype=np.float32)),
        "ref_atom_name_chars": atom_name_chars(names).to(i32),
        "ref_space_uid": torch.from_numpy(tk.atom_to_token.astype(np.int32)),
        "msa": oh(torch.from_numpy(msa), len(restypes)).to(i32),
        "has_deletion": torch.from_numpy((deletions != 0).astype(np.float32)),
        "deletion_value": torch.from_numpy(np.arctan(deletions / 3.0) * 2 / np.pi).float(),
        "profile": torch.from_numpy(profile).float(),
        "deletion_mean": torch.from_numpy(deletion_mean).float(),
        "msa_mask": torch.ones(n_msa, n_tok),
        "num_paired_seqs": t(0),
        "template_restype": oh(torch.full((n_templ, n_tok), rt_index["GAP"]), len(restypes)).to(i32),
        "template_pseudo_beta_mask": torch.zeros(n_templ, n_tok),
        "template_backbone_frame_mask": torch.zeros(n_templ, n_tok),
        "template_distogram": torch.zeros(n_templ, n_tok, n_tok, 39),
        "template_unit_vector": torch.zeros(n_templ, n_tok, n_tok, 3),
        "token_bonds": torch.zeros(n_tok, n_tok, dtype=i32),
        "token_mask": torch.ones(n_tok),
        "atom_mask": torch.ones(n_atom),
        "cyclic_mask": torch.zeros(n_tok, dtype=torch.bool),
        "start_atom_index": torch.from_numpy(tk.starts.astype(np.int32)),
        "num_atoms_per_token": torch.from_numpy(n_per_tok.astype(np.int32)),
        "atom_to_token_index": torch.from_numpy(tk.atom_to_token.astype(np.int32)),
    }
    return {k: v.unsqueeze(0) for k, v in f.items()}, atoms


def _atomic_number(element: str) -> int:
    from rdkit.Chem import GetPeriodicTable  # OpenFold3's own element table

    return int(GetPeriodicTable().GetAtomicNumber(element.capitalize()))


def synthetic_features(sequence: str, n_msa: int = 4, n_templ: int = 2, seed: int = 0) -> dict:
    """A batch (of one) of OpenFold3 features of one protein chain: residue types and the real
    per-residue atom counts from the sequence, the rest as ``openfold3.tests.utils.data_utils.
    random_of3_features`` makes them (seeded, no ground truth)."""
    from Bio.Data.IUPACData import protein_letters_1to3
    from openfold3.core.data.resources.residues import (
        STANDARD_PROTEIN_RESIDUES_3,
        STANDARD_RESIDUES_WITH_GAP_3,
    )
    from openfold3.core.data.resources.token_atom_constants import (
        TOKEN_NAME_TO_ATOM_NAMES,
    )

    g = torch.Generator().manual_seed(seed)
    names = [protein_letters_1to3.get(a, "Gly").upper() for a in sequence]
    names = [n if n in STANDARD_PROTEIN_RESIDUES_3 else "GLY" for n in names]
    n_token = len(names)
    restype = torch.tensor([STANDARD_RESIDUES_WITH_GAP_3.index(n) for n in names])
    n_atoms = torch.tensor([len(TOKEN_NAME_TO_ATOM_NAMES[n]) for n in names])
    n_atom = int(n_atoms.sum())
    atom_to_token = torch.repeat_interleave(torch.arange(n_token), n_atoms).int()
    start = torch.cat([torch.zeros(1, dtype=torch.long), n_atoms.cumsum(0)[:-1]]).int()
    n_types = len(STANDARD_RESIDUES_WITH_GAP_3)
    msa = torch.randint(0, 20, (n_msa, n_token), generator=g)
    msa[0] = restype
    f = {
        "residue_index": torch.arange(n_token).int(),
        "token_index": torch.arange(n_token).int(),
        "asym_id": torch.ones(n_token).int(),
        "entity_id": torch.ones(n_token).int(),
        "sym_id": torch.ones(n_token).int(),
        "restype": _one_hot(restype, n_types).int(),
        "is_protein": torch.ones(n_token).int(),
        "is_dna": torch.zeros(n_token).int(),
        "is_rna": torch.zeros(n_token).int(),
        "is_ligand": torch.zeros(n_token).int(),
        "is_atomized": torch.zeros(n_token).int(),
        "ref_pos": torch.randn(n_atom, 3, generator=g),
        "ref_mask": torch.ones(n_atom).int(),
        "ref_element": _one_hot(torch.randint(0, 119, (n_atom,), generator=g), 119).int(),
        "ref_charge": torch.zeros(n_atom),
        "ref_atom_name_chars": _one_hot(torch.randint(0, 64, (n_atom, 4), generator=g), 64).int(),
        "ref_space_uid": atom_to_token.clone(),
        "msa": _one_hot(msa, 32).int(),
        "has_deletion": torch.zeros(n_msa, n_token),
        "deletion_value": torch.zeros(n_msa, n_token),
        "profile": _one_hot(msa, 32).mean(0),
        "deletion_mean": torch.zeros(n_token),
        "template_restype": _one_hot(torch.randint(0, 32, (n_templ, n_token), generator=g), 32).int(),
        "template_pseudo_beta_mask": torch.ones(n_templ, n_token),
        "template_backbone_frame_mask": torch.ones(n_templ, n_token),
        "template_distogram": _one_hot(torch.randint(0, 39, (n_templ, n_token, n_token), generator=g), 39),
        "template_unit_vector": torch.nn.functional.normalize(
            torch.randn(n_templ, n_token, n_token, 3, generator=g), dim=-1
        ),
        "token_bonds": torch.zeros(n_token, n_token).int(),
        "token_mask": torch.ones(n_token),
        "atom_mask": torch.ones(n_atom),
        "cyclic_mask": torch.zeros(n_token, dtype=torch.bool),
        "start_atom_index": start,
        "num_atoms_per_token": n_atoms.int(),
        "atom_to_token_index": atom_to_token,
        "msa_mask": torch.ones(n_msa, n_token),
        "num_paired_seqs": torch.tensor(1),
    }
    return {k: v.unsqueeze(0) for k, v in f.items()}


def _one_hot(idx: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx, k).float()
