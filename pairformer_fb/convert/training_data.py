"""Fine-tuning data: random contiguous token crops of offline-featurised Protenix samples
(``ProteinCrops``; the crop itself, which knows Protenix's feature keys, is
``hosts.protenix.training.crop_features``), and the train / held-out split of the samples
(``split_samples``). Used by ``convert.finetune``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..hosts.protenix.training import crop_features


class ProteinCrops:
    """The featurised samples and the seeded choice of (sample, crop) for a step and rank."""

    def __init__(self, samples, *, crop_size: int, seed: int, msa_dir=None):
        from ..hosts.protenix.featurize import protenix_features

        if crop_size < 1:
            raise ValueError(f"data.crop_size must be >= 1, got {crop_size}")
        self.names = [s.name for s in samples]
        self.features = [protenix_features(s, msa_dir=msa_dir, seed=seed)[0] for s in samples]
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.features)

    def pick(self, step: int, rank: int = 0, world: int = 1) -> tuple[str, int, dict]:
        """(sample name, crop start, cropped features) of ``step`` on ``rank``: the samples in a
        seeded random order per epoch, the crop start uniform; a function of (seed, step, rank)."""
        n = len(self.features)
        index = step * world + rank
        epoch, i = divmod(index, n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        k = int(torch.randperm(n, generator=g)[i])
        n_tok = self.features[k]["restype"].shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * index + 1)
        start = int(torch.randint(0, max(1, n_tok - self.crop_size + 1), (1,), generator=g))
        return self.names[k], start, crop_features(self.features[k], start, self.crop_size)

    def fixed(self, k: int) -> dict:
        """Sample ``k``'s first ``crop_size`` tokens (validation)."""
        return crop_features(self.features[k], 0, self.crop_size)


def split_samples(specs: Sequence[str], val: Sequence[str] | None, n_val: int, data_dir=None):
    """(train, validation) samples: ``val`` names / files (held out), or else the last ``n_val``."""
    from ..data.featurize import DATA_SAMPLES, read_samples

    samples = read_samples(list(specs), data_dir or DATA_SAMPLES)
    if val:
        held = read_samples(list(val), data_dir or DATA_SAMPLES)
        names = {s.name for s in held}
        train = [s for s in samples if s.name not in names]
    else:
        if n_val < 0 or n_val >= len(samples):
            raise ValueError(f"data.n_val={n_val} must be >= 0 and leave a training sample (of {len(samples)})")
        train, held = samples[: len(samples) - n_val], samples[len(samples) - n_val :]
    if not train:
        raise ValueError("no training sample left after holding out the validation samples")
    _check_held_out(train, held)
    return train, held


def _check_held_out(train, held) -> None:
    """A ValueError when a validation sample has a chain whose sequence a training sample also
    has: its errors would be measured on what the factors trained on (7wux_a2b2, say, is two
    copies of 7wux_a's and 7wux_b's chains)."""
    trained = {c.sequence: s.name for s in train for c in s.chains}
    for s in held:
        for c in s.chains:
            if c.sequence in trained:
                raise ValueError(
                    f"validation sample {s.name!r} is not held out: its chain {c.name!r} has the sequence of a "
                    f"chain of training sample {trained[c.sequence]!r}; choose data.val_samples that no "
                    "training sample contains (or leave that training sample out of data.samples)"
                )


# ---------------------------------------------------------------------------------------------
# the model
