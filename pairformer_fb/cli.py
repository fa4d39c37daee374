"""What every script of ``scripts/`` shares: its command line (Hydra overrides on one config of
``configs/``), its help, its errors and how it writes files.

``main(config_name, task)`` composes the script's config with Hydra's compose API (no run
directory, no ``.hydra/``, no log file: a failed run leaves nothing behind) and calls
``task(cfg)``. On the way:

* ``--help`` / ``-h`` prints the script's docstring and its own options with their
  descriptions (the comments of its YAML file; for config groups, each option's first comment
  line) — nothing of other scripts' configs. ``--cfg`` prints the composed config and exits.
* Keys the script does not know are rejected, also when added with ``+`` / ``++`` (Hydra adds
  any key then); the message names the closest known ones. Free-form mappings (a key whose
  default is ``{}`` or ``null``, e.g. ``overrides``) take any sub-key.
* Mandatory values (``???``) are checked before the task runs, and so is an ``output_dir``
  option: files must be creatable there (``check_writable_dir``); the task creates it.
* Bad input (``ValueError`` and its subclasses, ``OSError``, ``ImportError``, Hydra's and
  OmegaConf's errors, and the script's own ``errors``) ends the script with exactly one line
  ``<script>: error: <message>`` on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the
  traceback instead. Other exceptions (bugs) keep their traceback.
* Library warnings are not shown (``-W`` / ``PYTHONWARNINGS`` still choose), so that the
  console holds the progress bars and the results.

``atomic_write`` is the one way the tools write an output file (checkpoint, report, results):
through a temporary file in the same folder and ``os.replace``, with the file mode of the input
it derives from or else the one the umask gives (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_USAGE = 2


class UsageError(ValueError):
    """A command line the script cannot run (unknown key, missing value, bad option)."""


# ---------------------------------------------------------------------------------------------
# files


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def positive_int(value, what: str, allow_null: bool = False):
    """``value`` when it is an integer >= 1 (or None with ``allow_null``); else a ValueError
    naming ``what``."""
    if value is None and allow_null:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer{' or null' if allow_null else ''}, got {value!r}")
    return value


def positive_ints(values, what: str) -> list[int]:
    """``values`` as a list when it is a list of integers >= 1 (e.g. sequence lengths); else a
    ValueError naming ``what``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a list of positive integers, got {values!r}")
    values = list(values)
    for v in values:
        positive_int(v, f"{what}: every entry ({values})")
    return values


def check_names(values, what: str, allowed: Sequence[str]) -> list[str]:
    """``values`` as a list when it is a non-empty list of distinct names from ``allowed`` (the
    variants, modules, hosts a script runs); else a ValueError naming ``what`` and the choices."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a list of names from {list(allowed)}, got {values!r}")
    values = list(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values or len(set(values)) != len(values):
        problem = f"unknown {unknown}" if unknown else ("empty" if not values else f"a name twice: {values}")
        raise ValueError(f"{what}: {problem}; expected distinct names from {list(allowed)}")
    return values


# a scalar setting's expected kind: "bool", "int", "number" (int or float), or a tuple of the allowed values
SettingKind = str | tuple
# (dotted key, kind, least value or None)
Setting = tuple[str, SettingKind, float | None]
_KIND_WORDS = {"bool": "true or false", "int": "an integer", "number": "a number"}


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg``'s value at the dotted ``key`` (None where it or a mapping above it is absent)."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def check_divisible(cfg: Mapping[str, Any], key: str, by: str) -> None:
    """A ValueError where the setting ``key`` (a width) is not a multiple of the setting ``by`` (a
    head count), both dotted keys of ``cfg`` checked as positive integers before."""
    width, heads = _setting(cfg, key), _setting(cfg, by)
    if width % heads:
        raise ValueError(f"{key} = {width} is not divisible by {by} = {heads}")


def check_settings(cfg: Mapping[str, Any], settings: Sequence[Setting]) -> None:
    """Raise a ValueError naming the first of ``settings`` that ``cfg`` (a nested mapping: a plain
    dict or a composed config) holds with the wrong type or out of range; an absent or null
    setting is left to its default. Booleans are not integers here (``warmup=true`` is wrong)."""
    for key, kind, least in settings:
        node = _setting(cfg, key)
        if node is None:
            continue
        if isinstance(kind, tuple):
            if node not in kind:
                raise ValueError(f"{key} must be one of {', '.join(map(str, kind))}, got {node!r}")
            continue
        ok = {
            "bool": isinstance(node, bool),
            "int": isinstance(node, int) and not isinstance(node, bool),
            "number": isinstance(node, (int, float)) and not isinstance(node, bool),
        }[kind]
        if not ok or (least is not None and node < least):
            bound = f" >= {least:g}" if least is not None else ""
            raise ValueError(f"{key} must be {_KIND_WORDS[kind]}{bound}, got {node!r}")


# settings that mean the same in every script that has them, checked by ``main`` before the task
COMMON_SETTINGS: tuple[Setting, ...] = (
    ("device", ("auto", "cuda", "cpu"), None),
    ("seed", "int", 0),
    ("warmup", "int", 0),  # untimed runs
    ("repeats", "int", 1),  # timed runs
    ("warmup_ms", "number", 0),  # triton.testing.do_bench's warm-up and repetition times
    ("rep_ms", "number", 1),
    ("overwrite", "bool", None),  # replace the results an output_dir already holds
)


_COMMON_KEYS = frozenset(key for key, _, _ in COMMON_SETTINGS)


def check_results_not_replaced(
    cfg: Mapping[str, Any], files: Sequence[str] = ("results.json",), resume_hint: str = " resume=true to add to it,"
) -> None:
    """A FileExistsError where ``output_dir`` already holds one of an earlier run's ``files`` (a
    benchmark's ``results.json``) and the config says neither ``overwrite=true`` nor ``resume``
    (the scripts that resume, e.g. the ladder, check what they add to themselves): a script never
    replaces earlier results unasked. Checked by ``main`` before the task starts (for
    results.json; tune_kernels and finetune name their own files)."""
    if cfg.get("overwrite") or cfg.get("resume"):
        return
    held = [name for name in files if (Path(cfg["output_dir"]) / name).exists()]
    if held:
        resume = resume_hint if "resume" in cfg else ""
        raise FileExistsError(
            f"output_dir={cfg['output_dir']} already holds {' and '.join('a ' + n for n in held)}: give "
            f"overwrite=true to replace {'it' if len(held) == 1 else 'them'},{resume} or another output_dir"
        )


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Raise PermissionError unless files can be created in ``path`` or, where it does not exist
    yet, in its nearest existing ancestor (NotADirectoryError if that is a file)."""
    p = Path(os.path.abspath(path))
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{what}={path}: {probe} is not a folder")
    try:  # the real test (os.access says yes to root on a read-only file system)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PermissionError(f"{what}={path}: cannot create files in {probe} ({e.strerror or e})") from None
    return p


def atomic_write(
    path: str | os.PathLike, data: bytes | str | Callable[[Any], None], *, mode_from: str | os.PathLike | None = None
) -> Path:
    """Write ``path`` atomically: ``data`` (bytes, text, or a function writing to the binary file
    object) into a temporary file in the same folder, flushed and synced, then ``os.replace``.
    Readers see the old file or the whole new one; a failure leaves nothing behind. The file gets
    ``mode_from``'s permission bits when given (an output derived from that input), else the
    umask's (``default_file_mode``)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        mode = default_file_mode()
        if mode_from is not None:
            try:
                mode = os.stat(mode_from).st_mode & 0o777
            except OSError:
                pass
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ---------------------------------------------------------------------------------------------
# errors


def one_line(e: BaseException) -> str:
    """The exception's message on one line (Hydra's and OmegaConf's span several)."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(e, MissingMandatoryValue):
        return f"{getattr(e, 'full_key', None) or e}: a value is required (give {getattr(e, 'full_key', 'it')}=...)"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if isinstance(e, FileNotFoundError) and e.filename and not lines[1:] and e.strerror:
        lines = [f"{e.filename}: {e.strerror}"]
    return " ".join(lines) or type(e).__name__


def fail(prog: str, message: str) -> None:
    """Print ``<prog>: error: <message>`` (one line) on stderr and exit with status 2."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return ValueError, OSError, ImportError, HydraException, OmegaConfBaseException


# ---------------------------------------------------------------------------------------------
# configs: groups, known keys, help


def _config_file(config_dir: Path, name: str) -> Path:
    return config_dir / f"{name}.yaml"


def _groups(config_dir: Path, name: str) -> dict[str, str]:
    """The config groups the primary config selects in its defaults list: {group: default option}."""
    from omegaconf import DictConfig, OmegaConf

    path = _config_file(config_dir, name)
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ValueError(f"{path}: a config must be a mapping, this file holds a list")
    out = {}
    for item in raw.get("defaults", []) or []:
        if isinstance(item, str) or not hasattr(item, "items"):
            continue
        for k, v in item.items():
            if not str(k).startswith(("override ", "hydra")) and (config_dir / str(k)).is_dir():
                out[str(k)] = str(v)
    return out


def _is_known(base: Any, key: str) -> bool:
    """Whether ``key`` (dotted) names an option of ``base`` (the config as a plain container): it
    exists, or it lies under a free-form mapping (default ``{}``) or a ``null`` default."""
    node = base
    for part in key.split("."):
        if node is None or isinstance(node, list) or (isinstance(node, dict) and not node):
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _leaf_keys(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        out += _leaf_keys(v, key + ".") if isinstance(v, dict) and v else [key]
    return out


def _check_override_type(base: Any, key: str, override: Any) -> None:
    """A UsageError where an override's value is not of its default's kind: a bool setting takes
    true / false ("no" is not false), a numeric one a number, a list setting a list (a single
    value would be read letter by letter), a mapping a mapping. Null is left to the script, and so
    are settings whose default is a string or null (paths, "auto"-style choices)."""
    default = _setting(base, key)  # None where it is null or lies under a free-form mapping
    value = override.value()
    if default is None or value is None or isinstance(default, str):
        return
    line = override.input_line
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{key} must be true or false, got {value!r} (in {line!r})")
    elif isinstance(default, (int, float)):
        if key in _COMMON_KEYS:  # checked with their bounds by check_settings (main)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key} must be a number, got {value!r} (in {line!r})")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise UsageError(f'{key} must be a list, e.g. "{key}=[a,b]", got {value!r} (in {line!r})')
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise UsageError(f'{key} must be a mapping, e.g. "{key}={{a:1}}", got {value!r} (in {line!r})')


def compose_config(config_name: str, overrides: Sequence[str], *, config_dir: Path = CONFIGS):
    """The script's config: ``config_dir/config_name.yaml`` with the command line's Hydra
    overrides, after rejecting every key the config does not have (see ``_is_known``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf import OmegaConf

    parser, parsed = OverridesParser.create(), []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as e:
            raise UsageError(
                f"cannot read {line!r}: {str(e).splitlines()[0]} (expected key=value; lists "
                f'"key=[a,b]", mappings "+key={{a:1}}"; quote them for the shell)'
            ) from None
    groups = _groups(config_dir, config_name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        group_choices: list[str] = []
        for o in parsed:
            if o.key_or_group in groups:
                assert o.input_line is not None  # parse_overrides records the line of each override
                group_choices.append(o.input_line)
        # compose gives a DictConfig, whose container is a dict
        base = cast(
            dict, OmegaConf.to_container(compose(config_name=config_name, overrides=group_choices), resolve=False)
        )
        for o in parsed:
            key = o.key_or_group
            if key in groups or key.startswith("hydra.") or key == "hydra" or o.is_delete():
                continue
            if not _is_known(base, key):
                known = _leaf_keys(base)
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(close)}?" if close else f"known keys: {', '.join(known)}"
                raise UsageError(
                    f"unknown key {key!r} (in {o.input_line!r}): not an option of this script; "
                    f"{hint} (--help lists them)"
                )
            _check_override_type(base, key, o)
        cfg = compose(config_name=config_name, overrides=list(overrides))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"{', '.join(k + '=' for k in missing)} must be given (--help)")
    return cfg


_COMMENT = re.compile(r"\s+#\s?(.*)$")


def _described(text: str, skip: Sequence[str] = ("defaults", "hydra")) -> list[str]:
    """The YAML text's option lines with their comments, minus the top-level sections ``skip``
    and the file's leading comment block."""
    out, skipping, head = [], False, True
    for line in text.splitlines():
        if head and (line.startswith("#") or not line.strip()):
            continue
        head = False
        top = re.match(r"^([A-Za-z_][\w]*):", line)
        if top:
            skipping = top.group(1) in skip
        if not skipping and line.strip():
            out.append("  " + line.rstrip())
    return out


def help_text(config_name: str, doc: str | None, *, config_dir: Path = CONFIGS) -> str:
    """``--help``: the script's docstring, then its options as its YAML file states them (values
    and their comments), then for each config group its options with their first comment line."""
    path = _config_file(config_dir, config_name)
    text = path.read_text()
    lead = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    parts = [
        (doc or "").strip(),
        "",
        f"Options (key=value on the command line; defaults from {path.relative_to(config_dir.parent)}):",
        "",
    ]
    parts += _described(text)
    for group, default in _groups(config_dir, config_name).items():
        parts += ["", f"{group}=OPTION (config group {group}/; default {default}):"]
        for f in sorted((config_dir / group).glob("*.yaml")):
            first = next((ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#")), "")
            parts.append(f"  {f.stem:<16} {first}")
        default_file = config_dir / group / f"{default}.yaml"
        if default_file.is_file():
            parts += [f"  its keys ({group}.KEY=value; as in {group}={default}):"]
            parts += ["  " + ln for ln in _described(default_file.read_text())]
    parts += [
        "",
        'Lists and mappings: "samples=[1crn,1ubq]", "+overrides={a.b:1}". Unknown keys are errors. '
        "--cfg prints the composed config. Errors: one line on stderr, exit status 2 "
        "(HYDRA_FULL_ERROR=1: the traceback).",
    ]
    if lead and not doc:
        parts = lead + parts
    return "\n".join(parts).strip() + "\n"


# ---------------------------------------------------------------------------------------------
# the entry point


def main(
    config_name: str,
    task: Callable[[Any], Any],
    *,
    doc: str | None = None,
    prog: str | None = None,
    config_dir: Path | str = CONFIGS,
    errors: Sequence[type[BaseException]] = (),
    argv: Sequence[str] | None = None,
) -> Any:
    """Run a script: compose ``config_dir/config_name.yaml`` with the command line (``argv``,
    default ``sys.argv[1:]``) and call ``task(cfg)`` (see the module docstring)."""
    config_dir = Path(config_dir)
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).stem
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # child processes (DDP, workers) too
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(config_name, doc, config_dir=config_dir), end="")
        return None
    show_cfg = "--cfg" in argv
    if show_cfg:  # Hydra's "--cfg job": the composed config
        i = argv.index("--cfg")
        del argv[i : i + (2 if argv[i + 1 : i + 2] in (["job"], ["all"]) else 1)]
    caught = tuple(user_errors()) + tuple(errors)
    try:
        flags = [a for a in argv if a.startswith("-")]
        if flags:
            raise UsageError(f"unknown flag(s) {' '.join(flags)}: options are key=value (--help lists them)")
        cfg = compose_config(config_name, argv, config_dir=config_dir)
        if show_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg), end="")
            return None
        check_settings(cfg, COMMON_SETTINGS)
        if "output_dir" in cfg:
            if not isinstance(cfg.output_dir, str) or not cfg.output_dir.strip():
                raise UsageError(f"output_dir must be a folder path, got {cfg.output_dir!r}")
            check_writable_dir(cfg.output_dir, "output_dir")
            check_results_not_replaced(cfg)
        return task(cfg)
    except caught as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(prog, one_line(e))


__all__ = [
    "COMMON_SETTINGS",
    "UsageError",
    "atomic_write",
    "check_names",
    "check_results_not_replaced",
    "check_writable_dir",
    "compose_config",
    "default_file_mode",
    "fail",
    "help_text",
    "main",
    "one_line",
]
