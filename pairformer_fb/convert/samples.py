"""Sample proteins for fitting factor networks: read the sequences of FASTA files and run a host
model on them, so that its patched modules see the pair representations the model produces.

How a host's model is run is the host's (its adapter, ``hosts/<host>/adapter.py``):

* ``sample_runner``: a full model of the host, run on one sequence's features -- Protenix on its
  real inference features, offline (``hosts/protenix/featurize.py``); OpenFold3 on *synthetic
  features around the real sequence* (its data pipeline needs the CCD, MSA and template
  databases, which are not here: residue types and per-residue atom counts from the sequence,
  the rest random but seeded; ``hosts/openfold3/featurize.synthetic_features``);
* anything else (Boltz-2, a bare trunk, a stand-in holding one): every trunk Pairformer stack of
  the host (``TRUNK_STACK_CLASS``) found in the model is run (``run_trunk_stack``) on Gaussian
  single / pair inputs with the sequences' lengths (the first block sees random inputs, later
  blocks the stack's own outputs).

FASTA files are read by ``data.featurize.read_fasta`` (biopython, the residue letters checked).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..hosts import get_adapter
from ..modules import FlashBiasAttentionPairBias, FlashBiasTriangleAttention


def cut_lengths(max_tokens: int | Sequence[int] | None) -> Sequence[int | None]:
    """The lengths the sample chains are cut to: ``max_tokens`` as a sorted list without repeats
    (an int: that one; None: [None], whole chains)."""
    if max_tokens is None:
        return [None]
    if isinstance(max_tokens, (int, np.integer)):
        return [int(max_tokens)]
    return sorted(set(int(n) for n in max_tokens))


def read_fasta_sequences(
    paths: Iterable[str | os.PathLike], max_tokens: int | Sequence[int] | None = None
) -> list[tuple[str, str]]:
    """``[(file stem:record id, sequence)]`` of every record (chain) in the FASTA files, read and
    checked by ``featurize.read_fasta``, cut to its first ``max_tokens`` residues (None: whole).
    Several lengths: every chain cut at each, chain by chain (a chain's cuts follow each other,
    shortest first), so that the fit sees the pair representations of several token counts.

    A cut that repeats an earlier one is left out (a homomer's second chain, the same protein in
    two files, a chain shorter than two of the lengths): it would give the fit the same bias
    targets twice, and a held-out chain must be one the fit did not see."""
    from ..data.featurize import read_fasta

    lengths = cut_lengths(max_tokens)
    seen: set[str] = set()
    out = []
    for path in paths:
        for chain in read_fasta(path).chains:
            for n in lengths:
                seq = chain.sequence[:n] if n else chain.sequence
                if seq not in seen:
                    seen.add(seq)
                    out.append((f"{Path(path).stem}:{chain.name}", seq))
    return out


def last_chain_share(sequences: Sequence[tuple[str, str]]) -> float:
    """The share of ``sequences`` that the last chain's cuts take (their names are the chain's):
    the fraction of a run's calls that holds that chain out of the fit."""
    last = sequences[-1][0]
    return sum(name == last for name, _ in sequences) / len(sequences)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run_trunk_stacks(model: nn.Module, host: str, sequences: Sequence[tuple[str, str]], seed: int) -> str:
    """The fallback runner (see the module docstring). Returns what it ran."""
    adapter = get_adapter(host)
    cls = adapter.TRUNK_STACK_CLASS
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
            adapter.run_trunk_stack(stack, s, z, mask, pair_mask)
    return f"{host} trunk stack(s) {[p or '<model>' for p, _ in stacks]} on Gaussian (s, z)"


def _stack_widths(stack: nn.Module) -> tuple[int, int]:
    """(c_s, c_z) of a trunk stack, read off its patched modules (or the host's attributes)."""
    from ..patching.patching import patched_modules

    c_s = c_z = None
    for m in patched_modules(stack).values():
        fb = m.flash_bias
        # a trunk stack holds triangle and single attentions only (the diffusion kinds are not in it)
        assert isinstance(fb, (FlashBiasTriangleAttention, FlashBiasAttentionPairBias))
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

    runner = get_adapter(host).sample_runner(model)
    with torch.no_grad():
        seed_all(seed)
        if runner is None:
            return _run_trunk_stacks(model, host, sequences, seed)
        run, what = runner
        for i, (_, seq) in enumerate(tqdm(sequences, desc="samples", disable=not progress)):
            run(seq, seed + i)
        return what


SampleRunner = Callable[[nn.Module], object]

__all__ = ["SampleRunner", "cut_lengths", "last_chain_share", "read_fasta_sequences", "run_samples", "seed_all"]
