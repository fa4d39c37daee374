"""Structure I/O and agreement metrics for the structure benchmark.

* ``write_structure`` writes predicted coordinates with their residue and atom names as mmCIF
  (``.cif``) or PDB (``.pdb``) through biopython (``Bio.PDB.StructureBuilder`` + ``MMCIFIO`` /
  ``PDBIO``); ``read_ca`` reads the Cα atoms (and the one-letter sequence) of a PDB / mmCIF file
  with biopython's parsers.
* ``agreement`` compares two sets of corresponding Cα coordinates: the Cα RMSD after optimal
  superposition (the Kabsch algorithm, as biotite's ``superimpose``, but in float64: biotite casts
  coordinates to float32, whose rounding at the coordinates' magnitude, ~1e-4 Å at the ~2000 Å of
  random-weight structures, was the floor of every RMSD, e.g. 1e-4 between identical structures),
  and with established implementations the Cα lDDT (biotite ``lddt``: 15 Å inclusion radius, thresholds 0.5 / 1 / 2 / 4 Å) and the
  TM-score normalised by the reference's length, either biotite's ``tm_score`` of the fixed
  residue correspondence after the RMSD superposition ("superposed", the default: fast; a lower
  bound of the optimum, equal to it for structures a rigid motion apart and within ~1e-3 of
  TM-align for close ones, which the tests check) or tmtools' TM-align ("tmalign").
* ``match_to_reference`` pairs the predicted residues with a reference structure's by a global
  sequence alignment (biopython ``PairwiseAligner``), so that a reference with missing or extra
  residues can be compared.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class StructureError(ValueError):
    """A structure file that cannot be written or read as asked."""


def write_structure(path: str | os.PathLike, atoms, coords=None, *, name: str = "prediction", b_factors=None) -> Path:
    """Write ``atoms`` (a biotite AtomArray: chain_id, res_id, res_name, atom_name, element) with
    ``coords`` ([n_atom, 3], default ``atoms.coord``) as mmCIF (``.cif``) or PDB (``.pdb``).
    ``b_factors``: optional per-atom values (e.g. pLDDT) for the B-factor column."""
    from Bio.PDB import MMCIFIO, PDBIO
    from Bio.PDB.StructureBuilder import StructureBuilder

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".cif", ".pdb"):
        raise StructureError(f"structure path {str(path)!r}: the suffix must be .cif (mmCIF) or .pdb")
    n = atoms.array_length()
    xyz = np.asarray(atoms.coord if coords is None else coords, dtype=np.float64)
    if xyz.shape != (n, 3):
        raise StructureError(f"coords must have shape [{n}, 3] (one row per atom), got {list(xyz.shape)}")
    if not np.isfinite(xyz).all():
        raise StructureError("coords hold NaN or infinite values")
    if suffix == ".pdb" and np.abs(xyz).max() >= 1e4:
        raise StructureError("coordinates beyond ±9999.999 Å do not fit PDB's columns; write .cif")
    bf = np.zeros(n) if b_factors is None else np.asarray(b_factors, dtype=np.float64)

    sb = StructureBuilder()
    sb.init_structure(name)
    sb.init_model(0)
    chain = res = None
    for i in range(n):
        if atoms.chain_id[i] != chain:
            chain = str(atoms.chain_id[i])
            sb.init_chain(chain)
            sb.init_seg("    ")
            res = None
        if (int(atoms.res_id[i]), str(atoms.res_name[i])) != res:
            res = (int(atoms.res_id[i]), str(atoms.res_name[i]))
            sb.init_residue(res[1], " ", res[0], " ")
        atom_name = str(atoms.atom_name[i])
        # PDB's column rule: one-letter elements start in column 14 (" CA "), as biopython writes them
        fullname = f" {atom_name:<3}" if len(atom_name) < 4 and len(str(atoms.element[i])) == 1 else f"{atom_name:<4}"
        sb.init_atom(
            atom_name,
            xyz[i],
            float(bf[i]),
            1.0,
            " ",
            fullname,
            serial_number=i + 1,
            element=str(atoms.element[i]).upper(),
        )
    io = MMCIFIO() if suffix == ".cif" else PDBIO()
    io.set_structure(sb.get_structure())
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save(str(path))
    return path


def read_structure(path: str | os.PathLike):
    """A Bio.PDB Structure from a .pdb / .cif (.mmcif) file."""
    from Bio.PDB import MMCIFParser, PDBParser

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"structure file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    parser: MMCIFParser | PDBParser
    if suffix in (".cif", ".mmcif"):
        parser = MMCIFParser(QUIET=True)
    elif suffix in (".pdb", ".ent"):
        parser = PDBParser(QUIET=True)
    else:
        raise StructureError(f"structure file {str(path)!r}: expected .pdb, .ent, .cif or .mmcif")
    try:
        return parser.get_structure(path.stem, str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad input
        raise StructureError(f"{path}: not a readable structure ({type(e).__name__}: {e})") from e


def read_ca(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Cα coordinates [n, 3] and one-letter sequence of the first model's amino-acid residues
    (chains in file order; residues without a Cα are skipped)."""
    from Bio.PDB.Polypeptide import is_aa
    from Bio.SeqUtils import seq1

    structure = read_structure(path)
    model = next(iter(structure), None)
    if model is None:
        raise StructureError(f"{path}: no model in the file")
    xyz, seq = [], []
    for chain in model:
        for res in chain:
            if is_aa(res, standard=False) and "CA" in res:
                xyz.append(res["CA"].coord)
                seq.append(seq1(res.get_resname(), custom_map={"MSE": "M"}) or "X")
    if not xyz:
        raise StructureError(f"{path}: no amino-acid residue with a CA atom")
    return np.asarray(xyz, dtype=np.float64), "".join(seq)


def ca_coords(atoms, coords=None) -> np.ndarray:
    """The Cα rows of ``coords`` (default ``atoms.coord``), in residue order."""
    xyz = np.asarray(atoms.coord if coords is None else coords, dtype=np.float64)
    return xyz[np.asarray(atoms.atom_name) == "CA"]


def match_to_reference(pred_seq: str, ref_seq: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (pred, ref) of the residues paired by a global alignment of the two sequences
    (identities only)."""
    from Bio import Align

    aligner = Align.PairwiseAligner(
        mode="global", match_score=1, mismatch_score=-1, open_gap_score=-2, extend_gap_score=-0.5
    )
    aln = aligner.align(pred_seq, ref_seq)[0]
    pi, ri = [], []
    for (a0, a1), (b0, b1) in zip(*aln.aligned):
        for k in range(a1 - a0):
            if pred_seq[a0 + k] == ref_seq[b0 + k]:
                pi.append(a0 + k)
                ri.append(b0 + k)
    if len(pi) < 3:
        raise StructureError(f"the reference's sequence matches only {len(pi)} predicted residues")
    return np.asarray(pi), np.asarray(ri)


# ---------------------------------------------------------------------------------------------
# metrics


def _as_atoms(xyz: np.ndarray):
    """A CA-only biotite AtomArray (one residue per atom) for biotite's metrics."""
    import biotite.structure as struc

    a = struc.AtomArray(len(xyz))
    a.coord = xyz.astype(np.float32)
    a.atom_name[:] = "CA"
    a.element[:] = "C"
    a.res_name[:] = "GLY"
    a.res_id = np.arange(1, len(xyz) + 1)
    a.chain_id[:] = "A"
    return a


def _check_pair(ref: np.ndarray, sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.float64)
    sub = np.asarray(sub, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != 3 or ref.shape != sub.shape:
        raise ValueError(
            f"reference and subject must both have shape [n, 3], got {list(ref.shape)} and {list(sub.shape)}"
        )
    if len(ref) < 3:
        raise ValueError(f"need at least 3 corresponding atoms, got {len(ref)}")
    return ref, sub


def _superimposed(ref: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """``sub`` moved onto ``ref`` by the rigid motion that minimises the RMSD: the Kabsch
    algorithm of biotite's ``superimpose`` (SVD of the cross-covariance of the centred
    coordinates, reflection excluded), computed in float64. biotite's own casts the coordinates
    to float32 (``biotite.structure.coord``), so its fit, and the RMSD of identical structures,
    carried float32 rounding of the order of 1e-7 times the coordinates' magnitude; here it is
    float64 rounding (1e-16 times)."""
    ref = np.asarray(ref, dtype=np.float64)
    sub = np.asarray(sub, dtype=np.float64)
    ref_c, sub_c = ref.mean(0), sub.mean(0)
    v, _, w = np.linalg.svd((ref - ref_c).T @ (sub - sub_c))
    if np.linalg.det(v) * np.linalg.det(w) < 0:  # a reflection: flip the least significant axis
        v[:, -1] *= -1
    return (sub - sub_c) @ (v @ w).T + ref_c


def ca_rmsd(ref: np.ndarray, sub: np.ndarray) -> float:
    """RMSD after optimal (Kabsch) superposition of ``sub`` onto ``ref``, in float64."""
    ref, sub = _check_pair(ref, sub)
    return float(np.sqrt(np.mean(np.sum((_superimposed(ref, sub) - ref) ** 2, axis=-1))))


def ca_lddt(ref: np.ndarray, sub: np.ndarray) -> float:
    """Cα lDDT of ``sub`` against ``ref`` (biotite; superposition-free)."""
    import biotite.structure as struc

    ref, sub = _check_pair(ref, sub)
    return float(struc.lddt(_as_atoms(ref), _as_atoms(sub)))


def tm_score_tmalign(ref: np.ndarray, sub: np.ndarray, seq: str | None = None) -> float:
    """TM-score by TM-align (tmtools), normalised by the reference's length."""
    import tmtools

    ref, sub = _check_pair(ref, sub)
    seq = seq or "A" * len(ref)
    res = tmtools.tm_align(np.ascontiguousarray(sub), np.ascontiguousarray(ref), seq, seq)
    return float(res.tm_norm_chain2)


def tm_score_superposed(ref: np.ndarray, sub: np.ndarray) -> float:
    """TM-score (biotite) of the fixed correspondence after the RMSD superposition: a lower bound
    of the TM-score, equal to it for structures that differ by a rigid motion."""
    import biotite.structure as struc

    ref, sub = _check_pair(ref, sub)
    fitted = _superimposed(ref, sub)
    idx = np.arange(len(ref))
    return float(struc.tm_score(_as_atoms(ref), _as_atoms(fitted), idx, idx, reference_length=len(ref)))


TM_METHODS = ("superposed", "tmalign")


def tm_score(ref: np.ndarray, sub: np.ndarray, seq: str | None = None, method: str = "superposed") -> float:
    """TM-score of ``sub`` against ``ref``: "superposed" (biotite, the fixed residue
    correspondence after the RMSD superposition; fast) or "tmalign" (tmtools' TM-align, which also
    searches the alignment and the superposition that maximise the score: the standard figure, but
    slow on structures that are far apart, e.g. those of random weights)."""
    if method == "superposed":
        return tm_score_superposed(ref, sub)
    if method == "tmalign":
        return tm_score_tmalign(ref, sub, seq)
    raise ValueError(f"tm_method must be one of {TM_METHODS}, got {method!r}")


def agreement(ref: np.ndarray, sub: np.ndarray, seq: str | None = None, tm_method: str = "superposed") -> dict:
    """``{rmsd, lddt, tm_score, n_residues, tm_method}`` of corresponding Cα coordinates. The
    lDDT is None (with ``lddt_note``) when the reference has no Cα pair within the 15 Å inclusion
    radius (structures of random weights are often that spread out)."""
    lddt = ca_lddt(ref, sub)
    out = {
        "rmsd": ca_rmsd(ref, sub),
        "lddt": lddt if np.isfinite(lddt) else None,
        "tm_score": tm_score(ref, sub, seq, tm_method),
        "n_residues": int(len(ref)),
        "tm_method": tm_method,
    }
    if out["lddt"] is None:
        out["lddt_note"] = "no Cα pair of the reference within lDDT's 15 Å inclusion radius"
    return out
