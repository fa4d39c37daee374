"""Offline featurisation of protein sequences for the structure benchmark.

Inputs: FASTA files (one file = one sample, one record = one chain; chains with the same
sequence form one entity), parsed with biopython's ``Bio.SeqIO``. ``read_samples`` resolves the
names the benchmark takes (``1crn`` -> ``data_samples/1crn.fasta``), FASTA files and folders of
them, and checks every sequence before any model work.

``read_samples`` and the helpers below are shared by the hosts' featurisers, which live with
their hosts: ``hosts/protenix/featurize.py``, ``hosts/openfold3/featurize.py``,
``hosts/boltz/featurize.py``.
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


def chain_letters(i: int) -> str:
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
        with open(path) as handle:  # closed on a parse error too (Biopython's own handle was not)
            records = list(SeqIO.parse(handle, "fasta"))
    except Exception as e:  # noqa: BLE001 - a parse failure of any kind is a bad input
        raise InputError(f"{path}: not a readable FASTA file ({type(e).__name__}: {e})") from e
    if not records:
        raise InputError(f"{path}: no FASTA records (expected '>name' lines followed by sequences)")
    chains = [
        Chain(chain_letters(i), r.id, check_sequence(str(r.seq), f"{path} record {r.id!r}"))
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


def a3m_rows(path: Path, query: str, aa_to_id: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
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
# shared by the hosts' featurisers: tokens, reference conformers, the unpaired MSA


def _random_rotations(n: int, seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()


def atom_name_chars(names: Sequence[str]) -> torch.Tensor:
    """AF3's ``ref_atom_name_chars``: 4 characters (space-padded), one-hot of ord(c) - 32."""
    idx = torch.tensor([[min(max(ord(c) - 32, 0), 63) for c in n.ljust(4)[:4]] for n in names])
    return torch.nn.functional.one_hot(idx, 64).float()


@dataclass
class Tokens:
    """Token-level ids (one token per residue, in chain order) and the atom -> token map."""

    chain: list[int]
    entity: list[int]
    sym: list[int]
    res: list[int]  # 1-based per chain
    name: list[str]  # CCD code
    starts: np.ndarray  # first atom of each token
    atom_to_token: np.ndarray
    atom_chain: np.ndarray


def tokens(sample: Sample, atoms) -> Tokens:
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
    return Tokens(tok_chain, tok_entity, tok_sym, tok_res, tok_name, starts, atom_to_token, atom_chain)


def reference_positions(atoms, starts: np.ndarray, seed: int, rotate: bool) -> np.ndarray:
    """The reference conformers: CCD ideal coordinates, centred (and randomly rotated, seeded)
    per residue."""
    n_atom = atoms.array_length()
    ref_pos = np.asarray(atoms.coord, dtype=np.float64).copy()
    rot = _random_rotations(len(starts), seed) if rotate else None
    for t, (a, b) in enumerate(zip(starts, np.r_[starts[1:], n_atom])):
        x = ref_pos[a:b] - ref_pos[a:b].mean(0)
        ref_pos[a:b] = x @ rot[t].T if rot is not None else x
    return ref_pos


def unpaired_msa(
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
            rows, dels = a3m_rows(p, chain.sequence, aa_to_id)
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
