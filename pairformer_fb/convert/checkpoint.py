"""Checkpoint I/O for the host models: read a host checkpoint in its own container format, write
one atomically, record what was converted (metadata) and strip our additions off again.

Container formats (the host is told by the key names, the format by the container's structure):

* Protenix ``.pt``: ``{"model": state_dict, "optimizer": ..., "step": ...}``; DDP checkpoints
  prefix every key with ``module.``.
* Boltz-2 Lightning ``.ckpt``: ``{"state_dict": ..., "hyper_parameters": ..., "ema": {"cur_step",
  "ema_weights"}, ...}`` (the Lightning module is the model: no key prefix).
* OpenFold3 ``.pt``: a plain state dict (released weights), or a Lightning checkpoint
  ``{"state_dict": {"model.<key>": ...}, "ema": {"params": state_dict, "decay": ...}}`` (DeepSpeed:
  ``"module"`` in place of ``"state_dict"``).

``HostCheckpoint.state_dict`` always has the keys of the host's model (``Protenix``, ``Boltz2``,
OpenFold3's model), the container prefix (``module.`` / ``model.``) taken off, so that it loads into
a (patched) host model; ``HostCheckpoint.make_container`` puts a state dict back in place.
A patched model's state dict is the host's plus ``<module path>.factor_network.*`` keys;
``strip_checkpoint`` removes those and the ``"pairformer_fb"`` metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..hosts import HOSTS, get_adapter
from ..modules.factor_network import FACTOR_KEY_MARK, FactorConfig
from ..patching.patching import PatchReport

METADATA_KEY = "pairformer_fb"
METADATA_FORMAT = 1

# where a container keeps its state dict, in the order looked at (() : the container is one)
STATE_DICT_KEYS = ("model", "state_dict", "module")
# the hosts' EMA weights: Boltz-2's EMA callback, OpenFold3's Lightning module
EMA_LOCATIONS = (("ema", "ema_weights"), ("ema", "params"))
# key prefixes a container adds to the model's keys (DDP, Lightning, DeepSpeed)
CONTAINER_PREFIXES = ("module.", "_forward_module.", "model.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as a host checkpoint (corrupt, no state dict, no host keys,
    a host that contradicts ``host=``)."""


@dataclass
class HostCheckpoint:
    """A host checkpoint as read by ``read_checkpoint``.

    Attributes:
        host: "protenix" / "boltz" / "openfold3".
        state_dict: the model's state dict, keys without the container prefix (the tensors are
            the container's own objects).
        container: the object loaded from the file, unchanged.
        location: the keys leading to the state dict in the container (() : the container is it).
        prefix: the prefix taken off every key ("" if none), e.g. "module." or "model.".
        path: the file read.
    """

    host: str
    state_dict: dict[str, Any]
    container: Any
    location: tuple[str, ...]
    prefix: str = ""
    path: Path | None = None

    @property
    def metadata(self) -> dict | None:
        """The ``"pairformer_fb"`` metadata of a converted checkpoint (None in a host's own)."""
        return self.container.get(METADATA_KEY) if isinstance(self.container, Mapping) else None

    def make_container(self, state_dict: Mapping[str, Any], *, metadata: Mapping | None = None) -> Any:
        """A copy of the container with ``state_dict`` (model keys) in place of the read one, the
        prefix put back, and ``metadata`` (if given) under ``"pairformer_fb"``. The container's
        dicts are copied, its tensors and other objects shared; the read container is unchanged."""
        sd = {self.prefix + k: v for k, v in state_dict.items()}
        if self.location:
            out = _copy_dicts(self.container)
            parent = out
            for key in self.location[:-1]:
                parent = parent[key]
            parent[self.location[-1]] = sd
        else:
            out = sd
        if metadata is not None:
            out[METADATA_KEY] = dict(metadata)
        return out


def _copy_dicts(obj: Any, drop=lambda key: False) -> Any:
    """Copy the dicts (and dict subclasses, keeping their type) of a nested structure, leaving out
    the keys ``drop`` picks; anything else (tensors, other containers) is shared."""
    if not isinstance(obj, dict):
        return obj
    out = copy.copy(obj)
    for k in list(out):
        if drop(k):
            del out[k]
        else:
            out[k] = _copy_dicts(out[k], drop)
    return out


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping):
        return False
    items = [(k, v) for k, v in obj.items() if k != METADATA_KEY]
    return bool(items) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in items)


def _strip_prefix(keys: list[str]) -> str:
    prefix = ""
    while True:
        for p in CONTAINER_PREFIXES:
            if all(k.startswith(prefix + p) for k in keys):
                prefix += p
                break
        else:
            return prefix


def _load(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # a container with objects beyond tensors and plain data (e.g. Lightning's hyper_parameters)
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from e
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: the checkpoint holds pickled objects beyond tensors and "
                f"plain data (or is corrupt), and allow_pickle=False: {e}"
            ) from e
    except Exception as e:  # torch raises RuntimeError / EOFError / IndexError ... on a bad file
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # as above
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e


def detect_checkpoint_host(keys) -> str | None:
    """The host whose Pairformer key names occur in ``keys`` (None: none), by each host adapter's
    ``CHECKPOINT_KEYS``. Raises CheckpointError if the keys of several hosts occur."""
    keys = list(keys)
    found = [h for h in HOSTS if any(get_adapter(h).CHECKPOINT_KEYS.search(k) for k in keys)]
    if len(found) > 1:
        raise CheckpointError(f"the state dict has the Pairformer keys of several hosts ({', '.join(found)})")
    return found[0] if found else None


def read_checkpoint(
    path: str | os.PathLike, host: str = "auto", *, use_ema: bool = False, allow_pickle: bool = True
) -> HostCheckpoint:
    """Read a host checkpoint (see the module docstring for the formats).

    Args:
        path: the file.
        host: "auto" (told by the key names) or a key of ``pairformer_fb.hosts.HOSTS``; a host
            that contradicts the key names is an error, one given for a state dict without any
            host's Pairformer keys (e.g. a bare stack's) is taken as is.
        use_ema: read the EMA weights (Boltz-2 ``ema.ema_weights``, OpenFold3 ``ema.params``)
            instead of the model's.
        allow_pickle: the file is loaded with ``weights_only=True`` first; if that refuses the
            container's objects, load it again with ``weights_only=False`` (which runs the
            pickle's code: only for files you trust) or, with False, raise CheckpointError.

    Raises FileNotFoundError for a missing file, CheckpointError for a corrupt one, a container
    without a state dict, a state dict of no known host, or ``host=`` contradicting the keys.
    """
    if host != "auto" and host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known hosts: {', '.join(sorted(HOSTS))} (or 'auto')")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    container = _load(path, allow_pickle)

    location: tuple[str, ...] | None  # the keys leading to the state dict in the container
    if use_ema:
        for loc in EMA_LOCATIONS:
            obj = container
            for key in loc:
                obj = obj.get(key) if isinstance(obj, Mapping) else None
            if _is_state_dict(obj):
                location = loc
                break
        else:
            raise CheckpointError(
                f"{path}: use_ema=True but the checkpoint holds no EMA weights "
                f"(looked for {', '.join('.'.join(loc) for loc in EMA_LOCATIONS)})"
            )
    elif _is_state_dict(container):
        location = ()
    else:
        location = next(
            ((k,) for k in STATE_DICT_KEYS if isinstance(container, Mapping) and _is_state_dict(container.get(k))), None
        )
        if location is None:
            what = (
                f"top-level keys {sorted(map(str, container))[:20]}"
                if isinstance(container, Mapping)
                else f"a {type(container).__name__}"
            )
            raise CheckpointError(
                f"{path}: found no state dict (a mapping of names to tensors) in the "
                f"checkpoint, neither at the top nor under {STATE_DICT_KEYS}: it holds {what}"
            )
    raw = container
    for key in location:
        raw = raw[key]
    keys = [k for k in raw if k != METADATA_KEY]
    prefix = _strip_prefix(keys)
    state_dict = {k[len(prefix) :]: raw[k] for k in keys}

    try:
        detected = detect_checkpoint_host(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if detected is None and host == "auto":
        sample = ", ".join(list(state_dict)[:3])
        raise CheckpointError(
            f"{path}: the state dict has no Pairformer keys of a known host ({', '.join(sorted(HOSTS))}), "
            f"e.g. 'pairformer_stack.blocks.0.tri_att_start.*' (Protenix), 'pairformer_module.layers.0.*' "
            f"(Boltz-2), 'pairformer_stack.blocks.0.pair_stack.*' (OpenFold3); its keys begin {sample}; "
            f"pass host= to read it anyway"
        )
    if detected is not None and host not in ("auto", detected):
        raise CheckpointError(f"{path}: host={host!r} but the checkpoint's keys are {detected!r}'s")
    return HostCheckpoint(
        host=detected or host, state_dict=state_dict, container=container, location=location, prefix=prefix, path=path
    )


def check_output_path(
    out_path: str | os.PathLike,
    input_path: str | os.PathLike | None = None,
    *,
    overwrite: bool = True,
    what: str = "output",
) -> Path:
    """Raise unless ``out_path`` can be written without touching ``input_path``: ValueError if it
    is the input (after resolving links), FileNotFoundError if its directory does not exist,
    PermissionError if files cannot be created there, IsADirectoryError if it is a directory,
    FileExistsError if it exists and not ``overwrite``. Returns it as a Path."""
    from ..cli import check_writable_dir

    out = Path(out_path)
    if input_path is not None:
        src = Path(input_path)
        same = os.path.realpath(out) == os.path.realpath(src)
        if not same and out.exists() and src.exists():
            same = os.path.samefile(out, src)
        if same:
            raise ValueError(f"the {what} {out} is the input checkpoint {src}: refusing to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"the {what}'s directory does not exist: {parent}")
    if out.is_dir():
        raise IsADirectoryError(f"the {what} is a directory: {out}")
    check_writable_dir(parent, what)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{what}={out} exists: choose another path, or overwrite=true to replace it")
    return out


def write_checkpoint_atomic(
    container: Any, out_path: str | os.PathLike, *, input_path: str | os.PathLike | None = None
) -> Path:
    """``torch.save(container)`` to ``out_path`` atomically (``cli.atomic_write``: readers see the
    old file or the whole new one, a failed write leaves nothing behind; the file gets the mode of
    ``input_path`` when given, else the umask's). Refuses (ValueError, nothing written) an
    ``out_path`` that is ``input_path`` (after resolving links). Returns the path written."""
    from ..cli import atomic_write

    out = check_output_path(out_path, input_path)
    return atomic_write(out, lambda f: torch.save(container, f), mode_from=input_path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_metadata(
    host: str,
    report: PatchReport,
    factor_config: FactorConfig | None,
    source_path: str | os.PathLike,
    *,
    prefix: str = "",
) -> dict:
    """What a converted checkpoint records under ``"pairformer_fb"`` (plain data only, so it loads
    with ``weights_only=True``): the host and its installed version, pairformer_fb's version, the
    mode and factor rank (and kind, stack, block index) of every patched module (by its path in
    the state dict: ``prefix`` + its path in the patched model, which ``prefix`` also records
    as ``model_prefix``), the factor config, the UTC date and the source file's path and sha256."""
    from .._version import __version__

    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known hosts: {', '.join(sorted(HOSTS))}")
    if report.host != host:
        raise ValueError(f"the PatchReport is of host {report.host!r}, not {host!r}")
    try:
        host_version = importlib.metadata.version(get_adapter(host).DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        host_version = None
    if factor_config is not None and not dataclasses.is_dataclass(factor_config):
        raise TypeError(f"factor_config must be a dataclass (FactorConfig) or None, got {type(factor_config).__name__}")
    source = Path(source_path)
    return {
        "format": METADATA_FORMAT,
        "host": host,
        "host_version": host_version,
        "pairformer_fb_version": __version__,
        "model_prefix": prefix,
        "modules": {
            prefix + e.path: {"mode": e.mode, "rank": e.rank, "kind": e.kind, "stack": e.stack, "block": e.block}
            for e in report.entries
        },
        "factor_config": dataclasses.asdict(factor_config) if factor_config is not None else None,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(source), "sha256": file_sha256(source)},
    }


def strip_checkpoint(container: Any) -> Any:
    """A plain host checkpoint from a converted one: a copy of ``container`` without the
    ``"pairformer_fb"`` metadata and without every key holding ``.factor_network.`` (in the state
    dict, the EMA weights, any nested dict). Tensors are shared, the input is unchanged.
    Optimizer states (indexed by number, not name) are left as they are; dicts are copied
    (keeping their type), other mappings (e.g. OmegaConf's) shared, not searched."""
    out = _copy_dicts(container, lambda key: isinstance(key, str) and FACTOR_KEY_MARK in key)
    if isinstance(out, dict):
        out.pop(METADATA_KEY, None)
    return out


__all__ = [
    "CheckpointError",
    "HostCheckpoint",
    "check_output_path",
    "detect_checkpoint_host",
    "file_sha256",
    "make_metadata",
    "read_checkpoint",
    "strip_checkpoint",
    "write_checkpoint_atomic",
]
