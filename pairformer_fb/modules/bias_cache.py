"""Reusing a pair bias that does not change between calls, and its low-rank factors by SVD.

In AF3-style diffusion the pair-biased attentions of the diffusion transformer and of the atom
transformer take their bias from pair representations that depend only on the trunk's output
(and the input features): the same for all diffusion steps (200 by default) and all samples.
The FlashBias diffusion modules therefore compute the bias -- or its low-rank factors -- once and
serve it again, as long as it provably cannot be stale:

* Inside a :class:`BiasScope` (an adapter enters one around every call of the host's diffusion
  module, with every tensor the bias can depend on: trunk outputs, cached conditionings, input
  features -- everything except the noisy coordinates and the noise level) an entry is reused
  while the scope's *generation* is unchanged. The generation advances whenever any of those
  tensors is a different object, was modified in place (its version counter moved), or cannot be
  tracked (an inference-mode tensor has no version counter; see below).
* Outside a scope an entry is reused only for the very same z tensor object (and the other
  tensors it was computed from, e.g. an atom mask) at the same version counter
  (:class:`TensorFingerprint`; held by weak reference, so a freed tensor's address that is reused
  by a new one can never match).
* Always: the entry also records the shape / dtype / device of z and of the output, the module's
  settings and the version counters of the parameters the bias is computed from (an optimiser
  step or ``load_state_dict`` invalidates it), and nothing that needs gradients is kept
  (training recomputes every call).

Inference tensors (``trust_inference_tensors``). Tensors created under ``torch.inference_mode``
(Lightning's ``predict`` default, which Boltz-2 and OpenFold3 runners use) carry no version
counter. What can be proved about one: outside inference mode it cannot be modified in place at
all (PyTorch raises "Inplace update to inference tensor outside InferenceMode"), and its object,
storage (``data_ptr``), shape, strides and offset can be checked at any time (``set_`` /
``resize_`` show there). What cannot: *inside* inference mode -- where the diffusion loop runs --
it can be written in place untracked, so "same object, same storage" does not prove "same
values". By default (``trust_inference_tensors=False``) such a tensor therefore never matches:
under inference mode the bias is recomputed at every step (exact, no reuse; ``torch.no_grad``
keeps the reuse, as its tensors have version counters). With ``trust_inference_tensors=True``
(:class:`BiasScope` / :class:`BiasCacheEntry` attribute; ``patch_model(...,
trust_inference_tensors=True)`` sets it on the diffusion attentions' scopes and caches) an
inference tensor matches while it is the same live object with the same storage pointer, shape,
strides, offset, dtype and device: reuse across the steps then rests on one assumption, that
nothing writes the trunk outputs / features in place between the diffusion steps of one
prediction (the hosts' samplers do not: they build new tensors). A new object (a new trunk pass,
a new batch) is still recomputed, and normal tensors (e.g. parameters) keep their version
counters, also inside inference mode.

Memory bound (:class:`BiasCacheBudget`). A cached dense bias is H x N x N per module: the
diffusion transformer's 24 blocks x 16 heads at 5,120 tokens hold ~40 GB in fp32 (20 GB in
bf16) for the whole sampling, beside the trunk's pair representation. The caches that share a
budget (``patch_model`` gives every diffusion attention it patches one, ``bias_cache_gib``) keep
a payload only while the payloads held by all of them together stay within its limit; a payload
beyond it is not kept (``BiasCacheEntry.refused`` counts them), so that module recomputes its
bias at every call, with the same code on the same inputs: the result is bit-identical to the
cached one, only slower. Payloads are admitted first come, first served (in a diffusion step:
the first blocks keep theirs). Limits: a number of GiB (0: nothing is kept), None (no bound) or
``"auto"``: on CUDA :data:`AUTO_FRACTION` of the memory the caches could use at the moment of
admission (the device's free memory, plus what PyTorch's allocator holds unused, plus what the
caches hold and the new payload), no bound on other devices. Nothing is admitted while a CUDA
stream is capturing a graph (the graph then recomputes that bias in every replay).

:func:`svd_factors` turns a fixed dense bias into FlashBias factors without any training: a
truncated SVD per head, with the rank chosen per head by a relative-error budget.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


class TensorFingerprint:
    """Identity of one tensor at one moment: a weak reference to the object plus its version
    counter, shape, strides, storage offset, dtype and device. ``matches(t)`` is true only for
    the same live object, not modified in place since. An inference tensor (no version counter)
    never matches, unless ``trust_inference`` (see the module docstring): then the same live
    object with the same storage pointer and layout matches."""

    __slots__ = ("_ref", "_state")

    def __init__(self, t: torch.Tensor, trust_inference: bool = False):
        self._ref = weakref.ref(t)
        self._state = _tensor_state(t, trust_inference)

    def matches(self, t: torch.Tensor) -> bool:
        if self._ref() is not t or self._state is None:
            return False
        return _tensor_state(t, True) == self._state


def _tensor_state(t: torch.Tensor, trust_inference: bool = False) -> tuple | None:
    """("version", version, layout...) of a normal tensor; for an inference tensor (no version
    counter) ("inference", data_ptr, layout...) if ``trust_inference``, else None (untrackable).
    Layout: shape, stride, storage offset, dtype, device."""
    layout = (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device)
    if t.is_inference():
        return ("inference", t.data_ptr(), *layout) if trust_inference else None
    return ("version", t._version, *layout)


def _leaves(obj: Any, out: list) -> None:
    """Flatten dicts / lists / tuples into their tensor and scalar leaves (dict keys sorted)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            out.append(("key", str(k)))
            _leaves(obj[k], out)
    elif isinstance(obj, (list, tuple)):
        out.append(("seq", len(obj)))
        for x in obj:
            _leaves(x, out)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        out.append(("value", type(obj).__name__, obj))
    # other objects (e.g. numpy arrays of metadata) are not network inputs: ignored


class BiasScope:
    """A scope within which a bias computed from fixed inputs may be reused (see module doc).

    ``enter(inputs)`` / ``exit()`` bracket one call of the host module whose inputs the biases
    depend on; modules ask ``token()`` for the key their entries are valid under (None outside
    the scope). The scope keeps only weak references to the inputs. ``trust_inference_tensors``:
    whether inference-mode inputs can match by identity (default False; see the module
    docstring).
    """

    def __init__(self, trust_inference_tensors: bool = False):
        self.trust_inference_tensors = trust_inference_tensors
        self.generation = 0
        self._key: list | None = None
        self._depth = 0
        self._entries: weakref.WeakSet[BiasCacheEntry] = weakref.WeakSet()
        self._finalizers: list = []

    @property
    def active(self) -> bool:
        return self._depth > 0

    def enter(self, inputs: Iterable[Any]) -> None:
        leaves: list = []
        _leaves(list(inputs), leaves)
        trust = self.trust_inference_tensors
        key = [TensorFingerprint(x, trust) if isinstance(x, torch.Tensor) else x for x in leaves]
        if self._depth == 0 and not self._same(key, leaves):
            self.generation += 1
            # once any input of this generation is freed it can never match again: free the
            # biases cached under it then (not at the next call), e.g. after a prediction
            for f in self._finalizers:  # the previous generation's are moot now
                f.detach()
            self._finalizers = [
                weakref.finalize(x, self._expire, self.generation) for x in leaves if isinstance(x, torch.Tensor)
            ]
        self._key = key if self._depth == 0 else self._key
        self._depth += 1

    def exit(self) -> None:
        self._depth = max(0, self._depth - 1)

    def invalidate(self) -> None:
        """Forget the inputs and free what was cached under them: the next scope starts a new
        generation."""
        self._expire(self.generation)
        for f in self._finalizers:
            f.detach()
        self._finalizers = []
        self._key = None
        self.generation += 1

    def _same(self, key: list, leaves: list) -> bool:
        old = self._key
        if old is None or len(old) != len(key):
            return False
        for o, x in zip(old, leaves):
            if isinstance(x, torch.Tensor):
                if not (isinstance(o, TensorFingerprint) and o.matches(x)):
                    return False
            elif isinstance(o, TensorFingerprint) or o != x:
                return False
        return True

    def token(self) -> tuple | None:
        return ("scope", id(self), self.generation) if self.active else None

    def register(self, entry: BiasCacheEntry) -> None:
        self._entries.add(entry)

    def _expire(self, generation: int) -> None:
        token = ("scope", id(self), generation)
        for entry in list(self._entries):
            if entry._token == token:
                entry.clear()


def _as_tensors(z) -> tuple:
    return (z,) if isinstance(z, torch.Tensor) else tuple(z)


GIB = 2**30
# bias_cache_gib="auto" on CUDA: the share of the memory the caches could use that they may hold
AUTO_FRACTION = 0.5


def _payload_bytes(payload) -> int:
    """Bytes of the storages the payload's tensors hold (each storage once; a bias padded to
    whole kernel tiles counts its padding)."""
    seen, total = set(), 0
    for t in _flat(payload):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def check_bias_cache_gib(value, what: str = "bias_cache_gib"):
    """``value`` if it is a valid limit ("auto", None or a finite number >= 0), else a ValueError
    naming ``what``."""
    ok = value is None or value == "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(
            f"{what} must be 'auto', null (no bound) or a number of GiB >= 0 (0: never keep a bias), got {value!r}"
        )
    return value


class BiasCacheBudget:
    """A bound on the bytes that the bias caches sharing it hold together (see the module
    docstring). ``limit_gib``: "auto", None (no bound) or GiB >= 0. Counts: ``admitted`` /
    ``refused`` payloads, ``peak_bytes`` (the most held at once)."""

    def __init__(self, limit_gib: float | str | None = "auto", fraction: float = AUTO_FRACTION):
        self.limit_gib = check_bias_cache_gib(limit_gib)
        self.fraction = fraction
        self._entries: weakref.WeakSet[BiasCacheEntry] = weakref.WeakSet()
        self.admitted = 0
        self.refused = 0
        self.peak_bytes = 0
        self.releases = 0
        # forward pre-hooks that call release() (patching.patch_model installs them on the host
        # modules that run after a prediction's diffusion sampling; unpatch_model removes them)
        self.release_hooks: list = []

    def release(self) -> None:
        """Drop every payload held under this budget: their modules recompute on their next
        call (bit-identically). For the end of a prediction's diffusion sampling, so that what
        runs next (the confidence head) has that memory back."""
        for entry in list(self._entries):
            entry.clear()
        self._entries = weakref.WeakSet()
        self.releases += 1

    def remove_release_hooks(self) -> None:
        for handle in self.release_hooks:
            handle.remove()
        self.release_hooks = []

    def held_bytes(self, exclude: BiasCacheEntry | None = None) -> int:
        """What the caches of this budget hold now (but ``exclude``'s)."""
        return sum(e.nbytes for e in list(self._entries) if e is not exclude)

    def limit_bytes(self, device: torch.device, pending: int = 0) -> float:
        """The bound now, on ``device``; ``pending``: the bytes of a payload already allocated
        and waiting for admission (freed if refused, so part of what the caches could use)."""
        if self.limit_gib is None:
            return math.inf
        if self.limit_gib != "auto":
            return float(self.limit_gib) * GIB
        if device.type != "cuda":
            return math.inf
        free, _ = torch.cuda.mem_get_info(device)
        spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return self.fraction * (free + spare + self.held_bytes() + pending)

    def admit(self, entry: BiasCacheEntry, payload) -> bool:
        """Whether ``entry`` may keep ``payload`` (replacing its own): the others' payloads plus
        this one within the limit, and no CUDA stream capturing."""
        nbytes = _payload_bytes(payload)
        held = self.held_bytes(exclude=entry)
        device = next((t.device for t in _flat(payload) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if capturing or held + nbytes > self.limit_bytes(device, nbytes):
            self.refused += 1
            return False
        self._entries.add(entry)
        self.admitted += 1
        self.peak_bytes = max(self.peak_bytes, held + nbytes)
        return True

    def stats(self) -> dict:
        """What a report records: the limit, what is held now and at most, the counts."""
        return {
            "limit_gib": self.limit_gib,
            "held_gib": self.held_bytes() / GIB,
            "peak_held_gib": self.peak_bytes / GIB,
            "admitted": self.admitted,
            "refused": self.refused,
            "releases": self.releases,
        }


class BiasCacheEntry:
    """One module's cached bias (or factors): valid for a scope token or the fingerprints of
    the tensors it was computed from (z, or a tuple such as (z, atom_mask)), plus a signature
    of everything else the payload depends on. ``trust_inference_tensors``: whether, outside a
    scope, inference tensors can match by identity (default False; see the module docstring).
    ``budget``: the :class:`BiasCacheBudget` it shares with other modules' caches (None: no
    bound); a payload it refuses is not kept (``refused`` counts them)."""

    def __init__(self, trust_inference_tensors: bool = False, budget: BiasCacheBudget | None = None):
        self.trust_inference_tensors = trust_inference_tensors
        self.budget = budget
        self._token: tuple | None = None
        self._fingerprint: tuple[TensorFingerprint, ...] | None = None
        self._signature: tuple | None = None
        self.payload = None
        self.hits = 0
        self.misses = 0
        self.refused = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the payload (0 when empty)."""
        return 0 if self.payload is None else _payload_bytes(self.payload)

    def clear(self) -> None:
        self._token = self._fingerprint = self._signature = self.payload = None

    def lookup(self, scope: BiasScope | None, z, signature: tuple):
        """The cached payload if it is valid for this call (z: a tensor or a tuple of them),
        else None."""
        if self.payload is None or signature != self._signature:
            return None
        token = scope.token() if scope is not None else None
        if token is not None:
            return self.payload if token == self._token else None
        tensors = _as_tensors(z)
        fps = self._fingerprint
        ok = fps is not None and len(fps) == len(tensors) and all(f.matches(t) for f, t in zip(fps, tensors))
        return self.payload if ok else None

    def store(self, scope: BiasScope | None, z, signature: tuple, payload) -> None:
        """Keep ``payload`` unless any of its tensors needs gradients or the budget refuses it
        (then nothing is kept: the next call recomputes it)."""
        tensors = [t for t in _flat(payload) if isinstance(t, torch.Tensor)]
        if any(t.requires_grad for t in tensors):
            self.clear()
            return
        if self.budget is not None and not self.budget.admit(self, payload):
            self.clear()
            self.refused += 1
            return
        token = scope.token() if scope is not None else None
        if scope is not None and token is not None:  # (a token comes from a scope only)
            scope.register(self)
        self._token = token
        trust = self.trust_inference_tensors
        self._fingerprint = tuple(TensorFingerprint(t, trust) for t in _as_tensors(z)) if token is None else None
        self._signature = signature
        self.payload = payload


def _flat(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flat(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat(y)
    else:
        yield x


def param_versions(params: Iterable[torch.nn.Parameter | None]) -> tuple:
    """Identity and version counter of each parameter (None stays None)."""
    return tuple(None if p is None else (id(p), p._version, tuple(p.shape), p.dtype, p.device) for p in params)


# ---------------------------------------------------------------------------------------------
# Low-rank factors of a fixed bias by truncated SVD


@dataclass(frozen=True)
class SVDConfig:
    """Low-rank factors of a fixed bias from its truncated SVD (no training).

    Per head h the rank r_h is the smallest r with ||B_h - B_h,r||_F <= rel_error ||B_h||_F,
    capped at ``max_rank`` (then the error is whatever max_rank achieves); heads with a lower
    rank are padded with zero columns up to R = max_h r_h, the factor width the op gets.

    Attributes:
        rel_error: the relative Frobenius-norm budget per head (0 -> always max_rank).
        max_rank: the largest rank (None: no cap, up to min(N_q, N_k)). Below half of
            min(N_q, N_k) a randomised SVD (``torch.svd_lowrank``) of max_rank + ``oversample``
            components is used, otherwise the full SVD.
        min_rank: the smallest rank per head (>= 1).
        oversample, n_iter: the randomised SVD's extra components and power iterations.
    """

    rel_error: float = 0.01
    max_rank: int | None = 64
    min_rank: int = 1
    oversample: int = 16
    n_iter: int = 4

    def __post_init__(self):
        if not (self.rel_error >= 0 and math.isfinite(self.rel_error)):
            raise ValueError(f"SVDConfig.rel_error must be a finite number >= 0, got {self.rel_error}")
        if self.min_rank < 1 or (self.max_rank is not None and self.max_rank < self.min_rank):
            raise ValueError(
                f"SVDConfig needs 1 <= min_rank <= max_rank, got min_rank={self.min_rank}, max_rank={self.max_rank}"
            )
        if self.oversample < 0 or self.n_iter < 0:
            raise ValueError(f"SVDConfig needs oversample >= 0 and n_iter >= 0, got {self.oversample}, {self.n_iter}")


@dataclass
class SVDFactors:
    """Result of :func:`svd_factors`: phi_q [*, H, N_q, R], phi_k [*, H, N_k, R] with
    phi_q phi_k^T ~= bias; per head its rank and achieved relative error (fp32 tensors [*, H])."""

    phi_q: torch.Tensor
    phi_k: torch.Tensor
    ranks: torch.Tensor
    rel_errors: torch.Tensor

    @property
    def rank(self) -> int:
        return self.phi_q.shape[-1]


def svd_factors(bias: torch.Tensor, config: SVDConfig = SVDConfig()) -> SVDFactors:
    """Low-rank factors of ``bias`` [*, H, N_q, N_k] by truncated SVD, the rank chosen per head
    (per matrix) by ``config``. Computed in fp32 (fp64 stays fp64) also under autocast (whose
    bf16 products the QR inside the SVD cannot take); the factors have the bias' dtype,
    phi_q = U_r sqrt(S_r) and phi_k = V_r sqrt(S_r)."""
    if not isinstance(bias, torch.Tensor) or bias.dim() < 2:
        raise ValueError(f"bias must be a tensor [*, N_q, N_k], got {getattr(bias, 'shape', type(bias).__name__)}")
    with torch.autocast(bias.device.type, enabled=False):
        return _svd_factors(bias, config)


def _svd_factors(bias: torch.Tensor, config: SVDConfig) -> SVDFactors:
    ct = torch.float64 if bias.dtype == torch.float64 else torch.float32
    b = bias.to(ct)
    n_q, n_k = b.shape[-2:]
    full = min(n_q, n_k)
    k = full if config.max_rank is None else min(config.max_rank, full)
    exact_spectrum = config.max_rank is None or 2 * k >= full
    if exact_spectrum:
        u, s, vh = torch.linalg.svd(b, full_matrices=False)
        v = vh.transpose(-1, -2)
    else:
        # svd_lowrank draws a random sketch: from a forked, seeded RNG, so that neither the
        # caller's random stream (e.g. the diffusion noise) nor the result depends on it
        with torch.random.fork_rng(devices=[b.device] if b.is_cuda else []):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(b, q=min(k + config.oversample, full), niter=config.n_iter)
    total = b.square().sum((-2, -1))  # [*]
    energy = s.square()
    # energy beyond the first k components: the rest of the full spectrum, or for the randomised
    # SVD ||B||^2 minus the energy found
    beyond = energy[..., k:].sum(-1) if exact_spectrum else (total - energy[..., :k].sum(-1)).clamp_min(0)
    u, s, v, energy = u[..., :k], s[..., :k], v[..., :k], energy[..., :k]
    # residual energy after r = 1..k components, summed from the tail (no cancellation)
    after = energy.flip(-1).cumsum(-1).flip(-1)  # after[i] = sum_{j >= i} s_j^2
    residual = torch.cat([after[..., 1:], torch.zeros_like(after[..., :1])], -1) + beyond[..., None]
    ok = residual <= (config.rel_error**2) * total[..., None]
    first_ok = torch.where(ok.any(-1), ok.to(torch.int64).argmax(-1) + 1, torch.full_like(total, k, dtype=torch.int64))
    ranks = first_ok.clamp(min=min(config.min_rank, k), max=k)
    R = int(ranks.max())
    keep = (torch.arange(R, device=b.device) < ranks[..., None]).to(ct)  # [*, R]
    root = s[..., :R].sqrt() * keep
    phi_q = u[..., :R] * root[..., None, :]
    phi_k = v[..., :R] * root[..., None, :]
    err = (torch.matmul(phi_q, phi_k.transpose(-1, -2)) - b).square().sum((-2, -1))
    rel = (err / total.clamp_min(torch.finfo(ct).tiny)).sqrt().to(torch.float32)
    return SVDFactors(phi_q.to(bias.dtype), phi_k.to(bias.dtype), ranks, rel)
