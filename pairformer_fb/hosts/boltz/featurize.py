"""Boltz-2's featurisation, through Boltz's own pipeline (``boltz_features``), and the CCD
molecules it needs (``boltz_molecules``, ``ccd_rdkit_mol``); the shared parts are in
``pairformer_fb.data.featurize``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ...data.featurize import InputError, Sample, a3m_rows, msa_path, residue_atoms

# biotite BondType -> bond order (its aromatic kinds carry the Kekulé order)
_BOND_ORDER = {1: 1, 2: 2, 3: 3, 5: 1, 6: 2, 7: 3}


def ccd_rdkit_mol(code: str):
    """The CCD residue ``code`` as an RDKit molecule the way Boltz's ``mols/`` data hold it: every
    atom (hydrogens included) with its CCD name (atom property ``name``), formal charge and
    ``leaving_atom`` flag, the CCD bonds, one conformer ``Ideal`` (the CCD ideal coordinates)
    and the stereo tags from it. Made from biotite's shipped CCD (no download)."""
    import biotite.structure.info as info
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    res = info.residue(code)
    orders = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    rw = Chem.RWMol()
    for i in range(res.array_length()):
        a = Chem.Atom(str(res.element[i]).capitalize())
        a.SetFormalCharge(int(res.charge[i]))
        a.SetProp("name", str(res.atom_name[i]))
        a.SetProp("leaving_atom", "1" if str(res.atom_name[i]) in ("OXT", "HXT", "H2") else "0")
        a.SetNoImplicit(True)
        rw.AddAtom(a)
    for i, j, t in res.bonds.as_array():
        rw.AddBond(int(i), int(j), orders[_BOND_ORDER.get(int(t), 1)])
    conf = Chem.Conformer(res.array_length())
    for i, xyz in enumerate(res.coord):
        conf.SetAtomPosition(i, Point3D(*map(float, xyz)))
    conf.SetProp("name", "Ideal")
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    cid = mol.AddConformer(conf, assignId=True)
    Chem.AssignStereochemistryFrom3D(mol, confId=cid)
    return mol


def boltz_molecules(mols_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """Boltz's canonical residue molecules (``boltz.data.const.canonical_tokens``) and where they
    come from: Boltz's own CCD data ``mols_dir`` when it holds them, else made from biotite's CCD
    (:func:`ccd_rdkit_mol`)."""
    from boltz.data import const

    if mols_dir is not None and (Path(mols_dir) / "ALA.pkl").is_file():
        from boltz.data.mol import load_canonicals

        return load_canonicals(str(mols_dir)), f"Boltz's CCD molecule data {mols_dir}"
    return {c: ccd_rdkit_mol(c) for c in const.canonical_tokens}, "canonical residues made from biotite's CCD"


def _boltz_msa(sample: Sample, entity: int, path: Path, query: str):
    """The A3M ``path`` of entity ``entity`` (0-based) parsed by Boltz's own ``parse_a3m`` (as
    ``boltz predict`` does: no taxonomy, at most its default 8192 rows), after the checks of
    :func:`a3m_rows` (the file exists, every row has the query's aligned columns and known
    letters, the first row is the query), errors naming the file and the entity."""
    from boltz.data import const
    from boltz.data.parse.a3m import parse_a3m

    where = f"{sample.name}, entity {entity + 1}"
    letters = {c: const.token_ids[t] for c, t in const.prot_letter_to_token.items()}
    try:
        a3m_rows(path, query, letters)
    except InputError as e:
        raise InputError(f"{where}: {e}") from e
    try:
        msa = parse_a3m(path, taxonomy=None, max_seqs=8192)
    except KeyError as e:  # a letter Boltz does not read (e.g. '.')
        raise InputError(f"{where}: {path}: Boltz cannot read the MSA letter {e.args[0]!r}") from e
    query_ids = [letters[c] for c in query]
    for k, (a, b) in enumerate(zip(msa.sequences["res_start"], msa.sequences["res_end"])):
        if b - a != len(query):  # e.g. a row wrapped over several lines, which Boltz reads line by line
            raise InputError(
                f"{where}: {path}: Boltz reads a row of {b - a} residues, the query has {len(query)} "
                "(one line per A3M row)"
            )
        if k == 0 and msa.residues["res_type"][a:b].tolist() != query_ids:
            raise InputError(f"{where}: {path}: the first row is not the query sequence of the sample")
    return msa


def boltz_features(sample: Sample, molecules: Mapping, *, seed: int = 0, msa_dir: str | os.PathLike | None = None):
    """Boltz-2's inference features of ``sample`` (a batch of one) and the atoms the model
    predicts (a biotite AtomArray in the features' atom order), through Boltz's own pipeline as
    ``boltz predict`` runs it (``parse_boltz_schema`` -> ``Boltz2Tokenizer`` ->
    ``Boltz2Featurizer.process`` with the inference settings of ``boltz.data.module.inferencev2``),
    no templates. Boltz groups chains of the same sequence into one entity, in order of first
    appearance; the atoms follow its chain order. MSA: an entity whose A3M :func:`msa_path` finds
    in ``msa_dir`` gets it as its schema ``msa``, parsed by Boltz's ``parse_a3m`` and handed to
    its ``Input`` per chain, as ``boltz predict`` loads it (unpaired: no taxonomy); the others
    run in single-sequence mode (``msa: empty``). (Boltz 2.2.1's featuriser, as ``boltz predict``
    runs it, then loses the deletion counts of the rows after the query: its
    ``construct_paired_msa`` re-slices ``chain_deletions`` per row; kept as Boltz does it.)"""
    import contextlib
    import io

    import biotite.structure as struc
    from boltz.data import const
    from boltz.data.feature.featurizerv2 import Boltz2Featurizer
    from boltz.data.parse.schema import parse_boltz_schema
    from boltz.data.tokenize.boltz2 import Boltz2Tokenizer
    from boltz.data.types import Input

    groups: dict[str, list[str]] = {}
    for c in sample.chains:
        groups.setdefault(c.sequence, []).append(c.chain_id)
    paths = [msa_path(sample, entity, msa_dir) for entity in range(len(groups))]
    schema = {
        "version": 1,
        "sequences": [
            {"protein": {"id": ids, "sequence": seq, "msa": str(p.resolve()) if p is not None else "empty"}}
            for (seq, ids), p in zip(groups.items(), paths)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # its single-sequence-mode notice
        target = parse_boltz_schema(sample.name, schema, ccd=dict(molecules), mol_dir=None, boltz_2=True)
    # each entity's A3M parsed once; Input.msa keyed by chain id, as inferencev2.load_input does
    parsed = {
        str(p.resolve()): _boltz_msa(sample, entity, p, seq)
        for entity, (seq, p) in enumerate(zip(groups, paths))
        if p is not None
    }
    msas = {}
    for c in target.record.chains:
        if c.msa_id != -1:
            msas[c.chain_id] = parsed[str(c.msa_id)]
    inp = Input(
        target.structure,
        msas,
        record=target.record,
        residue_constraints=target.residue_constraints,
        templates=None,
        extra_mols=target.extra_mols,
    )
    tokenized = Boltz2Tokenizer().tokenize(inp)
    # the featuriser rotates each residue's reference conformer with torch's global RNG
    # (center_random_augmentation): seeded here, the caller's RNG state left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        feats = Boltz2Featurizer().process(
            tokenized,
            molecules=dict(molecules),
            random=np.random.default_rng(seed),
            training=False,
            max_atoms=None,
            max_tokens=None,
            max_seqs=const.max_msa_seqs,
            pad_to_max_seqs=False,
            single_sequence_prop=0.0,
            compute_frames=True,
            inference_pocket_constraints=None,
            inference_contact_constraints=None,
            compute_constraint_features=True,
            override_method=None,
            compute_affinity=False,
        )

    # the atoms, from Boltz's structure (chains, residues, atom names in its order)
    s = target.structure
    elements = {}
    one = []
    for ch in s.chains:
        for r in s.residues[ch["res_idx"] : ch["res_idx"] + ch["res_num"]]:
            name = str(r["name"])
            if name not in elements:
                ccd = residue_atoms(name, c_terminal=True)
                elements[name] = dict(zip(ccd.atom_name, ccd.element))
            for a in s.atoms[r["atom_idx"] : r["atom_idx"] + r["atom_num"]]:
                one.append(
                    (str(ch["name"]), int(r["res_idx"]) + 1, name, str(a["name"]), elements[name][str(a["name"])])
                )
    atoms = struc.AtomArray(len(one))
    atoms.chain_id = np.array([x[0] for x in one])
    atoms.res_id = np.array([x[1] for x in one])
    atoms.res_name = np.array([x[2] for x in one])
    atoms.atom_name = np.array([x[3] for x in one])
    atoms.element = np.array([x[4] for x in one])
    n_real = int(feats["atom_pad_mask"].sum())
    if n_real != len(one):
        raise InputError(f"{sample.name}: Boltz's features hold {n_real} atoms, its structure {len(one)}")
    batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else v) for k, v in feats.items()}
    return batch, atoms
