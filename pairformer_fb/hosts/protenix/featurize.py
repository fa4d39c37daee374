"""Protenix's offline featurisation.

``protenix_features`` turns a sample into the input feature dict that
``protenix.model.protenix.Protenix.forward`` reads in inference mode, following Protenix 2.0.0's
own pipeline (``protenix/data/inference/json_to_feature.py`` -> ``core/featurizer.py``,
``core/parser.py`` ``AddAtomArrayAnnot``, ``msa/msa_featurizer.py``):

* tokens: one per standard residue; ``restype`` one-hot over Protenix's 32 residue classes
  (``protenix.data.constants.STD_RESIDUES_WITH_GAP``); ``residue_index`` 1-based per chain;
  ``asym_id`` = chain index, ``entity_id`` = entity index, ``sym_id`` = copy index in the entity.
* atoms: the heavy atoms of the residue's CCD entry in CCD order, the peptide bond's leaving
  atom OXT kept only on a chain's last residue (as Protenix's ``remove_leaving_atoms`` leaves
  them). The CCD data come from biotite (``biotite.structure.info``, shipped inside the package:
  no download). ``ref_pos`` are the CCD ideal coordinates, centred per residue and, as
  Protenix's featurizer does by default (``ref_pos_augment``), randomly rotated per residue —
  seeded here. (Protenix itself prefers an RDKit ETKDG conformer of the CCD entry, falling back
  to the ideal coordinates; that needs its CCD cache, a download.)
* ``ref_element``: one-hot over ``protenix.data.constants.get_all_elems()`` (128);
  ``ref_atom_name_chars``: 4 characters, each one-hot of ``ord(c) - 32`` (64 classes);
  ``ref_space_uid``: one id per (chain, residue); ``atom_to_tokatom_idx``: the atom's position
  in ``RES_ATOMS_DICT``; representative atoms: ``pae_rep_atom_mask`` / ``plddt_m_rep_atom_mask``
  = Cα, ``distogram_rep_atom_mask`` = Cβ (Cα for glycine); ``mol_id`` = chain (chains are not
  bonded), ``entity_mol_id`` = entity, ``mol_atom_index`` = atom index within the chain.
* MSA: single-sequence mode by default (the query as the only row, profile = its one-hot). With
  an A3M per entity (``<msa_dir>/<sample>.a3m`` for a one-entity sample, else
  ``<sample>_<entity>.a3m``, entity counted from 1) its rows are used unpaired: per chain,
  de-duplicated, lower-case insertions counted as deletions, chains merged block-diagonally
  with gaps (Protenix's unpaired merge; no cross-chain pairing by species).

The host's constants are read from the installed protenix package, not copied. The shared parts
(samples, atoms, tokens, MSA) are in ``pairformer_fb.data.featurize``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...data.featurize import Sample, atom_name_chars, build_atoms, reference_positions, tokens, unpaired_msa


def _host_constants():
    os.environ.setdefault("LAYERNORM_TYPE", "torch")
    try:
        from protenix.data.constants import (
            MSA_PROTEIN_SEQ_TO_ID,
            RES_ATOMS_DICT,
            STD_RESIDUES_WITH_GAP,
            get_all_elems,
        )
    except Exception as e:  # noqa: BLE001
        raise ImportError(
            f"protenix cannot be imported ({type(e).__name__}: {e}); install it with `make install`"
        ) from e
    return STD_RESIDUES_WITH_GAP, RES_ATOMS_DICT, get_all_elems(), MSA_PROTEIN_SEQ_TO_ID


def protenix_features(
    sample: Sample, *, msa_dir: str | os.PathLike | None = None, seed: int = 0, rotate_ref: bool = True
):
    """Protenix's inference features of ``sample`` (unbatched, CPU tensors) and the sample's
    atoms (a biotite AtomArray in the features' atom order, for writing the prediction).

    ``seed`` seeds the per-residue random rotation of the reference conformers
    (``rotate_ref=False``: centred only)."""
    restypes, res_atoms, elements, msa_aa_to_id = _host_constants()
    atoms = build_atoms(sample)
    n_atom = atoms.array_length()
    tk = tokens(sample, atoms)
    n_tok = len(tk.name)
    restype_idx = torch.tensor([restypes[r] for r in tk.name])
    atom_to_token, atom_chain = tk.atom_to_token, tk.atom_chain
    ref_pos = reference_positions(atoms, tk.starts, seed, rotate_ref)

    names = [str(n) for n in atoms.atom_name]
    elems = [str(e).upper() for e in atoms.element]
    elem_index = {e: i for i, e in enumerate(elements)}
    is_gly = np.asarray(atoms.res_name) == "GLY"
    ca = np.asarray(atoms.atom_name) == "CA"
    cb = np.asarray(atoms.atom_name) == "CB"
    mol_atom_index = np.concatenate([np.arange((atom_chain == c).sum()) for c in range(len(sample.chains))])

    msa, deletions, profile, deletion_mean, n_rows_prot = unpaired_msa(
        sample, msa_dir, restypes, msa_aa_to_id, restypes["-"], len(restypes)
    )

    t = torch.tensor
    f = {
        # tokens
        "token_index": torch.arange(n_tok),
        "residue_index": t(tk.res),
        "asym_id": t(tk.chain),
        "entity_id": t(tk.entity),
        "sym_id": t(tk.sym),
        "restype": torch.nn.functional.one_hot(restype_idx, len(restypes)).float(),
        "token_bonds": torch.zeros(n_tok, n_tok),  # polymer-polymer bonds of standard residues are not token bonds
        "has_frame": torch.ones(n_tok, dtype=torch.long),  # N, CA, C of every standard residue
        # atoms: reference conformers
        "ref_pos": torch.from_numpy(ref_pos).float(),
        "ref_mask": torch.ones(n_atom, dtype=torch.long),
        "ref_element": torch.nn.functional.one_hot(t([elem_index[e] for e in elems]), len(elements)).long(),
        "ref_charge": torch.from_numpy(np.asarray(atoms.charge, dtype=np.int64)),
        "ref_atom_name_chars": atom_name_chars(names).long(),
        "ref_space_uid": torch.from_numpy(atom_to_token.astype(np.int64)),
        "atom_to_token_idx": torch.from_numpy(atom_to_token.astype(np.int64)),
        "atom_to_tokatom_idx": t([res_atoms[r][n] for r, n in zip(atoms.res_name, names)]),
        "is_protein": torch.ones(n_atom, dtype=torch.long),
        "is_ligand": torch.zeros(n_atom, dtype=torch.long),
        "is_dna": torch.zeros(n_atom, dtype=torch.long),
        "is_rna": torch.zeros(n_atom, dtype=torch.long),
        "pae_rep_atom_mask": torch.from_numpy(ca.astype(np.int64)),
        "plddt_m_rep_atom_mask": torch.from_numpy(ca.astype(np.int64)),
        "distogram_rep_atom_mask": torch.from_numpy((cb | (is_gly & ca)).astype(np.int64)),
        "mol_id": torch.from_numpy(atom_chain.astype(np.int64)),
        "entity_mol_id": t([sample.entities.index(sample.chains[c].sequence) for c in atom_chain]),
        "mol_atom_index": torch.from_numpy(mol_atom_index.astype(np.int64)),
        # MSA
        "msa": torch.from_numpy(msa),
        "has_deletion": torch.from_numpy(np.clip(deletions, 0, 1)).float(),
        "deletion_value": torch.from_numpy(np.arctan(deletions / 3.0) * 2 / np.pi).float(),
        "profile": torch.from_numpy(profile).float(),
        "deletion_mean": torch.from_numpy(deletion_mean).float(),
        "prot_pair_num_alignments": t(1),
        "prot_unpair_num_alignments": t(n_rows_prot),
        "rna_pair_num_alignments": t(1),
        "rna_unpair_num_alignments": t(1),
    }
    return f, atoms


def sequence_features(sequence: str, seed: int = 0, name: str = "sample") -> dict:
    """Protenix's inference features (unbatched) of one protein chain ``sequence`` (checked by
    ``data.featurize.check_sequence``): ``protenix_features`` of a one-chain sample (``seed``:
    the reference conformers' random rotations). The conversion's sample runner uses it."""
    from ...data.featurize import Chain, check_sequence

    sample = Sample(name, Path(name), [Chain("A", name, check_sequence(sequence, name))])
    features, _ = protenix_features(sample, seed=seed)
    return features
