"""Sample proteins for fitting factor networks: read the sequences of FASTA files and run a host
model on them, so that its patched modules see the pair representations the model produces.

Protenix gets its real inference features, offline (``hosts/protenix/featurize.py``, the structure
benchmark's featuriser: tokens, CCD atoms and reference conformers, single-sequence MSA).
OpenFold3's data pipeline needs the CCD, MSA and template databases, which are not here, so its
features are *synthetic around the real sequence*: residue types and per-residue atom counts
from the sequence, the rest random but seeded. FASTA files are read by ``featurize.read_fasta``
(biopython, the residue letters checked).

Runners (``run_samples``):

* a full ``Protenix`` model: ``model(features, None, None, mode="inference")`` per sequence;
* a full ``OpenFold3`` model: ``model(batch)`` per sequence;
* anything else (Boltz-2, a bare trunk, a stand-in holding one): every trunk Pairformer stack of
  the host found in the model is run on Gaussian single / pair inputs with the sequences'
  lengths (the first block sees random inputs, later blocks the stack's own outputs).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..hosts.protenix.featurize import protenix_features as featurize_protenix

# the trunk-stack class of each host (by name, so that nothing is imported here)
TRUNK_STACK_CLASSES = {"protenix": "PairformerStack", "boltz": "PairformerModule", "openfold3": "PairFormerStack"}


def read_fasta_sequences(paths: Iterable[str | os.PathLike], max_tokens: int | None = None) -> list[tuple[str, str]]:
    """``[(file stem:record id, sequence)]`` of every record (chain) in the FASTA files, read and
    checked by ``featurize.read_fasta``, each cropped to its first ``max_tokens`` residues
    (None: whole)."""
    from ..data.featurize import read_fasta

    return [
        (f"{Path(path).stem}:{chain.name}", chain.sequence[:max_tokens] if max_tokens else chain.sequence)
        for path in paths
        for chain in read_fasta(path).chains
    ]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _one_hot(idx: torch.Tensor, k: int) -> torch.Tensor:
    return nn.functional.one_hot(idx, k).float()


def protenix_features(sequence: str, seed: int = 0, name: str = "sample") -> dict:
    """Protenix's real inference features (unbatched) of one protein chain, from
    ``hosts.protenix.featurize.protenix_features`` (``seed``: the reference conformers' random rotations)."""
    from ..data.featurize import Chain, Sample, check_sequence

    sample = Sample(name, Path(name), [Chain("A", name, check_sequence(sequence, name))])
    features, _ = featurize_protenix(sample, seed=seed)
    return features


def openfold3_features(sequence: str, n_msa: int = 4, n_templ: int = 2, seed: int = 0) -> dict:
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
        "template_unit_vector": nn.functional.normalize(torch.randn(n_templ, n_token, n_token, 3, generator=g), dim=-1),
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


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run_trunk_stacks(model: nn.Module, host: str, sequences: Sequence[tuple[str, str]], seed: int) -> str:
    """The fallback runner (see the module docstring). Returns what it ran."""
    cls = TRUNK_STACK_CLASSES[host]
    stacks = [(p, m) for p, m in model.named_modules() if type(m).__name__ == cls]
    if not stacks:
        raise ValueError(
            f"found no {host} trunk stack ({cls}) in {type(model).__name__} to run the samples "
            "through; pass samples= (a callable running the model) instead"
        )
    device = _model_device(model)
    for path, stack in stacks:
        c_s, c_z = _stack_widths(stack)
        for i, (_, seq) in enumerate(sequences):
            n = len(seq)
            g = torch.Generator().manual_seed(seed + i)
            s = torch.randn(1, n, c_s, generator=g).to(device)
            z = torch.randn(1, n, n, c_z, generator=g).to(device)
            mask, pair_mask = torch.ones(1, n, device=device), torch.ones(1, n, n, device=device)
            if host == "protenix":  # unbatched (s, z, pair_mask)
                stack(s[0], z[0], pair_mask[0])
            else:  # Boltz-2 (s, z, mask, pair_mask), OpenFold3 (s, z, single_mask, pair_mask)
                stack(s, z, mask, pair_mask)
    return f"{host} trunk stack(s) {[p or '<model>' for p, _ in stacks]} on Gaussian (s, z)"


def _stack_widths(stack: nn.Module) -> tuple[int, int]:
    """(c_s, c_z) of a trunk stack, read off its patched modules (or the host's attributes)."""
    from ..patching.patching import patched_modules

    c_s = c_z = None
    for m in patched_modules(stack).values():
        fb = m.flash_bias
        c_z = fb.c_z
        c_s = getattr(fb, "c_s", c_s)
    for name in ("c_s", "token_s"):
        c_s = c_s or getattr(stack, name, None)
    if c_s is None or c_z is None:
        raise ValueError(
            f"cannot tell the single / pair widths of {type(stack).__name__}: patch its single "
            "attention too, or pass samples= (a callable running the model)"
        )
    return int(c_s), int(c_z)


def run_samples(
    model: nn.Module, host: str, sequences: Sequence[tuple[str, str]], *, seed: int = 0, progress: bool = True
) -> str:
    """Run ``model`` (eval, no grad, every RNG seeded) on each sequence with the runner of its
    class (see the module docstring). Returns a line saying what was run."""
    from tqdm.auto import tqdm

    name = type(model).__name__
    device = _model_device(model)
    with torch.no_grad():
        seed_all(seed)
        if host == "protenix" and name == "Protenix":
            for i, (_, seq) in enumerate(tqdm(sequences, desc="samples", disable=not progress)):
                model(_to(protenix_features(seq, seed=seed + i), device), None, None, mode="inference")
            return "full Protenix model, inference on the sample sequences' features (hosts/protenix/featurize.py)"
        if host == "openfold3" and name == "OpenFold3":
            for i, (_, seq) in enumerate(tqdm(sequences, desc="samples", disable=not progress)):
                model(_to(openfold3_features(seq, seed=seed + i), device))
            return "full OpenFold3 model on synthetic features of the sample sequences"
        return _run_trunk_stacks(model, host, sequences, seed)


SampleRunner = Callable[[nn.Module], object]

__all__ = ["SampleRunner", "openfold3_features", "protenix_features", "read_fasta_sequences", "run_samples", "seed_all"]
