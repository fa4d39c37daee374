"""Offline featurisation of protein sequences for the structure benchmark.

Inputs: FASTA files (one file = one sample, one record = one chain; chains with the same
sequence form one entity), parsed with biopython's ``Bio.SeqIO``. ``read_samples`` resolves the
names the benchmark takes (``1crn`` -> ``data_samples/1crn.fasta``), FASTA files and folders of
them, and checks every sequence before any model work.

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

The host's constants are read from the installed protenix package, not copied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# the sample names of the repository's data_samples/ folder
DATA_SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")


class InputError(ValueError):
    """A sample that cannot be featurised (missing file, empty or unknown sequence, bad MSA)."""


def protein_1to3() -> dict[str, str]:
    """The 20 standard amino acids, one-letter -> CCD code (biopython's table)."""
    from Bio.Data.IUPACData import protein_letters_1to3

    return {k: v.upper() for k, v in protein_letters_1to3.items()}


@dataclass
class Chain:
    """One protein chain: ``chain_id`` (A, B, ...), the FASTA record's ``name`` and ``sequence``."""

    chain_id: str
    name: str
    sequence: str


@dataclass
class Sample:
    """One structure to predict: its chains, grouped into entities by identical sequence."""

    name: str
    path: Path
    chains: list[Chain]
    entities: list[str] = field(default_factory=list)  # the distinct sequences, in order of appearance

    def __post_init__(self):
        if not self.entities:
            for c in self.chains:
                if c.sequence not in self.entities:
                    self.entities.append(c.sequence)

    @property
    def n_tokens(self) -> int:
        return sum(len(c.sequence) for c in self.chains)


def _chain_letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (the chain ids Protenix gives)."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("A") + r) + s
    return s


def check_sequence(seq: str, where: str) -> str:
    """The sequence upper-cased, or InputError naming the sample, position and letter."""
    seq = seq.strip().upper()
    if not seq:
        raise InputError(f"{where}: empty sequence")
    allowed = protein_1to3()
    for i, c in enumerate(seq):
        if c not in allowed:
            raise InputError(
                f"{where}: unknown residue letter {c!r} at position {i + 1}; "
                f"the benchmark takes the 20 standard amino acids {''.join(sorted(allowed))}"
            )
    return seq


def read_fasta(path: str | os.PathLike, name: str | None = None) -> Sample:
    """One sample from a FASTA file (biopython ``SeqIO``): one record per chain."""
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise InputError(f"FASTA file {str(path)!r} does not exist")
    try:
        records = list(SeqIO.parse(str(path), "fasta"))
    except Exception as e:  # noqa: BLE001 - a parse failure of any kind is a bad input
        raise InputError(f"{path}: not a readable FASTA file ({type(e).__name__}: {e})") from e
    if not records:
        raise InputError(f"{path}: no FASTA records (expected '>name' lines followed by sequences)")
    chains = [
        Chain(_chain_letters(i), r.id, check_sequence(str(r.seq), f"{path} record {r.id!r}"))
        for i, r in enumerate(records)
    ]
    return Sample(name or path.stem, path, chains)


def read_samples(specs: Sequence[str], data_dir: str | os.PathLike = DATA_SAMPLES) -> list[Sample]:
    """Resolve the benchmark's ``samples=``: a name of ``data_dir`` (``1crn`` ->
    ``data_dir/1crn.fasta``), a FASTA file, or a folder (each FASTA file in it is a sample).
    Every file is parsed and every sequence checked here, before any model work."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not specs:
        raise InputError("samples is empty: name at least one sample, FASTA file or folder")
    data_dir = Path(data_dir)
    out: list[Sample] = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in FASTA_SUFFIXES)
            if not files:
                raise InputError(f"folder {spec!r} holds no FASTA files ({', '.join(FASTA_SUFFIXES)})")
            out += [read_fasta(f) for f in files]
        elif p.suffix.lower() in FASTA_SUFFIXES or p.is_file():
            out.append(read_fasta(p))
        else:
            f = data_dir / f"{spec}.fasta"
            if not f.is_file():
                known = sorted(x.stem for x in data_dir.glob("*.fasta")) if data_dir.is_dir() else []
                raise InputError(
                    f"sample {spec!r}: no file {str(f)!r} and no FASTA file or folder of that "
                    f"name; known samples: {', '.join(known) or '(none)'}"
                )
            out.append(read_fasta(f, spec))
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"samples named twice: {sorted(dup)}")
    return out


# ---------------------------------------------------------------------------------------------
# atoms from the CCD (biotite)


def residue_atoms(res_name: str, *, c_terminal: bool):
    """The heavy atoms of a CCD residue in CCD order, OXT only at a chain's C terminus: a biotite
    AtomArray with ideal coordinates, element and charge (biotite.structure.info, shipped CCD)."""
    import biotite.structure.info as info

    res = info.residue(res_name)
    keep = res.element != "H"
    if not c_terminal:
        keep &= res.atom_name != "OXT"
    return res[keep]


def build_atoms(sample: Sample, *, oxt: bool = True):
    """The sample's atoms as one biotite AtomArray (chain_id, res_id 1-based, res_name,
    atom_name, element, charge; coord = the CCD ideal coordinates, per residue). ``oxt``: keep
    the C-terminal OXT of each chain (Protenix's atoms; OpenFold3's have no OXT)."""
    import biotite.structure as struc

    one_to_three = protein_1to3()
    parts = []
    for chain in sample.chains:
        n = len(chain.sequence)
        for i, letter in enumerate(chain.sequence):
            res = residue_atoms(one_to_three[letter], c_terminal=oxt and i == n - 1).copy()
            res.chain_id[:] = chain.chain_id
            res.res_id[:] = i + 1
            res.hetero[:] = False
            parts.append(res)
    return struc.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# MSA


def _a3m_rows(path: Path, query: str, aa_to_id: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows (int ids) and deletion counts of an A3M file whose first row is ``query``."""
    from Bio import SeqIO

    if not path.is_file():
        raise InputError(f"MSA file {str(path)!r} does not exist")
    seqs = [str(r.seq) for r in SeqIO.parse(str(path), "fasta")]
    if not seqs:
        raise InputError(f"{path}: no sequences in the A3M file")
    rows, dels, seen = [], [], set()
    for k, s in enumerate(seqs):
        aligned = [c for c in s if not c.islower() and c != "."]
        if len(aligned) != len(query):
            raise InputError(f"{path}: row {k + 1} has {len(aligned)} aligned columns, the query {len(query)}")
        row, d, n_ins = [], [], 0
        for c in s:
            if c.islower() or c == ".":
                n_ins += c.islower()
                continue
            if c not in aa_to_id:
                raise InputError(f"{path}: row {k + 1}: unknown MSA letter {c!r}")
            row.append(aa_to_id[c])
            d.append(n_ins)
            n_ins = 0
        key = tuple(row)
        if key in seen:  # de-duplicated, as Protenix's unpaired MSA
            continue
        seen.add(key)
        rows.append(row)
        dels.append(d)
    if "".join(c for c in seqs[0] if not c.islower() and c != ".").upper() != query:
        raise InputError(f"{path}: the first row is not the query sequence of the sample")
    return np.array(rows, dtype=np.int64), np.array(dels, dtype=np.int64)


def msa_path(sample: Sample, entity: int, msa_dir: str | os.PathLike | None) -> Path | None:
    """The A3M file of entity ``entity`` (0-based) if ``msa_dir`` holds one."""
    if msa_dir is None:
        return None
    d = Path(msa_dir)
    names = [f"{sample.name}.a3m"] if len(sample.entities) == 1 else []
    names.append(f"{sample.name}_{entity + 1}.a3m")
    for n in names:
        if (d / n).is_file():
            return d / n
    return None


# ---------------------------------------------------------------------------------------------
# the feature dict


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


def _random_rotations(n: int, seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()


def atom_name_chars(names: Sequence[str]) -> torch.Tensor:
    """AF3's ``ref_atom_name_chars``: 4 characters (space-padded), one-hot of ord(c) - 32."""
    idx = torch.tensor([[min(max(ord(c) - 32, 0), 63) for c in n.ljust(4)[:4]] for n in names])
    return torch.nn.functional.one_hot(idx, 64).float()


@dataclass
class _Tokens:
    """Token-level ids (one token per residue, in chain order) and the atom -> token map."""

    chain: list[int]
    entity: list[int]
    sym: list[int]
    res: list[int]  # 1-based per chain
    name: list[str]  # CCD code
    starts: np.ndarray  # first atom of each token
    atom_to_token: np.ndarray
    atom_chain: np.ndarray


def _tokens(sample: Sample, atoms) -> _Tokens:
    tok_chain, tok_entity, tok_sym, tok_res, tok_name = [], [], [], [], []
    copies: dict[int, int] = {}
    one_to_three = protein_1to3()
    for ci, chain in enumerate(sample.chains):
        ent = sample.entities.index(chain.sequence)
        sym = copies.get(ent, 0)
        copies[ent] = sym + 1
        for i, letter in enumerate(chain.sequence):
            tok_chain.append(ci)
            tok_entity.append(ent)
            tok_sym.append(sym)
            tok_res.append(i + 1)
            tok_name.append(one_to_three[letter])
    # atom -> token: residues are contiguous runs of atoms
    n_atom = atoms.array_length()
    chain_index = {c.chain_id: i for i, c in enumerate(sample.chains)}
    atom_chain = np.array([chain_index[c] for c in atoms.chain_id])
    res_key = atom_chain * (1 << 20) + atoms.res_id
    starts = np.flatnonzero(np.r_[True, res_key[1:] != res_key[:-1]])
    atom_to_token = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n_atom]))
    assert len(starts) == len(tok_name)
    return _Tokens(tok_chain, tok_entity, tok_sym, tok_res, tok_name, starts, atom_to_token, atom_chain)


def _reference_positions(atoms, starts: np.ndarray, seed: int, rotate: bool) -> np.ndarray:
    """The reference conformers: CCD ideal coordinates, centred (and randomly rotated, seeded)
    per residue."""
    n_atom = atoms.array_length()
    ref_pos = np.asarray(atoms.coord, dtype=np.float64).copy()
    rot = _random_rotations(len(starts), seed) if rotate else None
    for t, (a, b) in enumerate(zip(starts, np.r_[starts[1:], n_atom])):
        x = ref_pos[a:b] - ref_pos[a:b].mean(0)
        ref_pos[a:b] = x @ rot[t].T if rot is not None else x
    return ref_pos


def _msa(
    sample: Sample, msa_dir, restype_ids: Mapping[str, int], aa_to_id: Mapping[str, int], gap: int, n_classes: int
):
    """Per chain (block-diagonal, unpaired), the query alone by default: (msa ids [n_msa, n_tok],
    deletion counts, profile [n_tok, n_classes], deletion mean [n_tok], rows of the deepest chain)."""
    one_to_three = protein_1to3()
    chain_rows, chain_dels, chain_profile = [], [], []
    for chain in sample.chains:
        query_ids = np.array([restype_ids[one_to_three[c]] for c in chain.sequence])
        p = msa_path(sample, sample.entities.index(chain.sequence), msa_dir)
        if p is None:
            rows, dels = query_ids[None], np.zeros((1, len(query_ids)), dtype=np.int64)
        else:
            rows, dels = _a3m_rows(p, chain.sequence, aa_to_id)
        chain_rows.append(rows)
        chain_dels.append(dels)
        chain_profile.append(np.stack([(rows == k).mean(0) for k in range(n_classes)], -1))
    n_tok = sum(r.shape[1] for r in chain_rows)
    n_msa = max(r.shape[0] for r in chain_rows)
    msa = np.full((n_msa, n_tok), gap, dtype=np.int64)
    deletions = np.zeros((n_msa, n_tok), dtype=np.float64)
    col = 0
    for rows, dels in zip(chain_rows, chain_dels):
        msa[: rows.shape[0], col : col + rows.shape[1]] = rows
        deletions[: rows.shape[0], col : col + rows.shape[1]] = dels
        col += rows.shape[1]
    profile = np.concatenate(chain_profile, 0)
    deletion_mean = np.concatenate([d.mean(0) for d in chain_dels])
    return msa, deletions, profile, deletion_mean, n_msa


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
    tk = _tokens(sample, atoms)
    n_tok = len(tk.name)
    restype_idx = torch.tensor([restypes[r] for r in tk.name])
    atom_to_token, atom_chain = tk.atom_to_token, tk.atom_chain
    ref_pos = _reference_positions(atoms, tk.starts, seed, rotate_ref)

    names = [str(n) for n in atoms.atom_name]
    elems = [str(e).upper() for e in atoms.element]
    elem_index = {e: i for i, e in enumerate(elements)}
    is_gly = np.asarray(atoms.res_name) == "GLY"
    ca = np.asarray(atoms.atom_name) == "CA"
    cb = np.asarray(atoms.atom_name) == "CB"
    mol_atom_index = np.concatenate([np.arange((atom_chain == c).sum()) for c in range(len(sample.chains))])

    msa, deletions, profile, deletion_mean, n_rows_prot = _msa(
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


def _openfold3_constants():
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
    restypes, atom_names = _openfold3_constants()
    rt_index = {r: i for i, r in enumerate(restypes)}
    atoms = build_atoms(sample, oxt=False)
    n_atom = atoms.array_length()
    tk = _tokens(sample, atoms)
    n_tok = len(tk.name)
    for t_i, (a, b) in enumerate(zip(tk.starts, np.r_[tk.starts[1:], n_atom])):
        got = [str(n) for n in atoms.atom_name[a:b]]
        if got != list(atom_names[tk.name[t_i]]):
            raise InputError(
                f"{sample.name}: residue {tk.name[t_i]}'s CCD atoms {got} are not OpenFold3's "
                f"{list(atom_names[tk.name[t_i]])}"
            )
    ref_pos = _reference_positions(atoms, tk.starts, seed, rotate_ref)
    one_to_three = protein_1to3()
    aa_to_id = {k: rt_index[v] for k, v in one_to_three.items()} | {"X": rt_index["UNK"], "-": rt_index["GAP"]}
    msa, deletions, profile, deletion_mean, _ = _msa(
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


# ---------------------------------------------------------------------------------------------
# Boltz-2

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
    :func:`_a3m_rows` (the file exists, every row has the query's aligned columns and known
    letters, the first row is the query), errors naming the file and the entity."""
    from boltz.data import const
    from boltz.data.parse.a3m import parse_a3m

    where = f"{sample.name}, entity {entity + 1}"
    letters = {c: const.token_ids[t] for c, t in const.prot_letter_to_token.items()}
    try:
        _a3m_rows(path, query, letters)
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
