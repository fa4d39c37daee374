"""CUDA graphs of a module's repeated calls (e.g. a diffusion module: one denoising step, 200
times per prediction), so that a launch-bound step costs one graph launch instead of hundreds of
kernel launches and the Python of every submodule.

:class:`GraphedCall` wraps a callable (a module's ``forward``; :func:`graph_module` installs it
and returns a handle with ``.remove()``):

* Calls are keyed by the structure of their arguments: dicts / lists / tuples are walked, tensor
  leaves give (shape, strides, dtype, device, requires_grad), simple leaves (None, bool, int,
  float, str) their value; plus the context a capture bakes in (grad mode, inference mode, the
  CUDA autocast state and dtype, the TF32 switches, the module's ``training`` flag, the ``mode``
  of each FlashBias module inside it). Other objects are not keyed: their identity is checked
  (same object on every replay).
* Call 1 of a key runs eagerly and records a fingerprint of every tensor leaf (weak reference,
  version counter, data pointer, layout). Call 2: leaves whose fingerprint changed are *varying*
  (they get static buffers); the others are *fixed* (the graph reads their memory in place). The
  call is warmed up on a side stream and captured (``torch.cuda.graph``, own memory pool); the
  graph is replayed once and a clone of its output returned.
* Call 3+: if every fixed leaf is still the same live object at the same version / data pointer,
  every other object leaf the same object, the module's parameters at the same versions (except
  ``ignore_params``: weights updated in place between calls, which a replay reads in place) and the
  tensors cached by FlashBias bias caches inside the module (``bias_cache.payload``) the same
  objects, the varying leaves are copied into the static buffers, the graph replayed and clones of
  its outputs returned. Otherwise the graph is dropped and learning starts again (that call runs
  eagerly, the next one captures): a new trunk pass (new s_trunk / z_trunk / pair_z objects)
  re-learns and recaptures, and the bias cache, refilled eagerly, is read by the new graph.
* Fixed leaves are held by weak reference, never strongly: a replay happens only after the check
  that each is alive (and its data pointer unchanged), so the graph never reads freed memory, and
  the trunk tensors (and the biases cached under them) are freed with the prediction as before.
  The graph's pool and static buffers live until the graph is dropped (``reset()``, ``remove()``,
  a new trunk pass, or eviction: at most ``max_graphs`` per wrapper).
* Inference-mode tensors have no version counter: they are matched by identity and data pointer
  only, so an in-place change of a fixed inference-mode tensor between calls is NOT detected
  (under ``torch.no_grad()``, how the hosts predict, it is).
* Never captured (the call runs eagerly): no CUDA tensor among the arguments (on a CPU the wrapper
  is a pass-through), a varying tensor on the CPU (its value would be baked in), grad enabled with
  a tensor or parameter that requires grad (training), the module in training mode, a FlashBias
  module inside it in "distill" mode (its loss is a Python attribute), a stream that
  is already capturing, a key whose capture failed (warned once; that key runs eagerly from then
  on), or a key whose graphs keep being invalidated before any replay (``max_relearns``).
* Under autocast the warm-up and capture run with the autocast weight-cast cache disabled
  (``cache_enabled=False``, as ``torch.cuda.make_graphed_callables`` requires): the casts are
  part of the graph instead of reading cached casts freed when the autocast region ends.
* ``patch_model`` / ``unpatch_model`` reset the graphs of the model's graphed modules (a graph
  replays the kernels captured; the modes are keyed, but after changing a patched module's other
  settings call ``handle.reset()`` yourself).

The capture mechanism is injectable (``backend=``): :class:`CudaGraphBackend` (the real one),
:class:`EagerReplayBackend` (replay re-runs the captured closure on the static buffers and copies
the result into the static outputs: graph semantics without CUDA, for tests and debugging).

Capture hazards in the hosts' diffusion modules (Protenix 2.0.0 ``DiffusionModule.forward``,
checked by reading the code; run tests/test_cuda_graphs.py on a GPU to confirm):

* ``protenix.utils.scatter_utils.scatter_mean`` (atom -> token aggregation) does
  ``count[count < 1] = 1``: boolean-mask assignment of a scalar, which PyTorch dispatches to
  ``masked_fill_`` (no sync); ``scatter_sum`` would sync on ``int(index.max())`` if ``dim_size``
  were None, but the atom encoder passes ``n_token`` (no sync).
* ``DiffusionConditioning.forward`` with ``pair_z=None`` and ``use_conditioning=False`` and
  ``inplace_safe`` zeroes ``s_trunk`` / ``z_trunk`` in place (input mutation inside the graph);
  Protenix's inference passes ``pair_z`` (prepared once) and ``use_conditioning=True``.
* ``blocks_per_ckpt`` / activation checkpointing is off without grad (``torch.is_grad_enabled``
  is a Python branch, keyed).
* Lowrank FlashBias with SVD factors syncs (``int(ranks.max())``) when it computes the factors:
  that happens at the eager call 1, the capture reads the cached factors. Under
  ``torch.inference_mode`` the bias scope cannot track the fixed inputs, every call recomputes
  the bias, so the capture fails for lowrank SVD (warned; eager) and captures the bias
  computation for exact mode (correct, no reuse).
* No ``.item()`` / ``.cpu()`` / ``nonzero`` / data-dependent shapes in the per-step path; the
  noise level and coordinates are CUDA tensors (the sampler's schedule lives on the device); the
  per-step random augmentation and noise are drawn outside the diffusion module.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..modules.common import FlashBiasModule

__all__ = [
    "CudaGraphBackend",
    "EagerReplayBackend",
    "GraphedCall",
    "GraphHandle",
    "graph_module",
    "graph_diffusion",
    "graphed_calls",
    "reset_graphs",
]

_SIMPLE = (bool, int, float, str, type(None))


# ---------------------------------------------------------------------------------------------
# flattening and fingerprints


def _flatten(obj: Any, tensors: list, objects: list, spec: list) -> None:
    """Walk dicts (keys in order) / lists / tuples: tensors -> ``tensors``, simple values into
    ``spec``, other objects -> ``objects`` (checked by identity)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        spec.append(_T)
    elif isinstance(obj, dict):
        spec.append(("dict", tuple(obj.keys())))
        for v in obj.values():
            _flatten(v, tensors, objects, spec)
    elif isinstance(obj, (list, tuple)):
        spec.append((type(obj), len(obj)))
        for v in obj:
            _flatten(v, tensors, objects, spec)
    elif isinstance(obj, _SIMPLE):
        spec.append((type(obj), obj))
    else:
        objects.append(obj)
        spec.append(_O)


_T, _O = ("tensor",), ("object",)


def _substitute(obj: Any, sub: dict[int, torch.Tensor]) -> Any:
    """``obj`` rebuilt with the tensors whose id is in ``sub`` replaced (containers copied)."""
    if isinstance(obj, torch.Tensor):
        return sub.get(id(obj), obj)
    if isinstance(obj, dict):
        items = {k: _substitute(v, sub) for k, v in obj.items()}
        try:
            return items if type(obj) is dict else type(obj)(items)
        except TypeError:  # a mapping type that cannot be built from a dict
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_substitute(v, sub) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_substitute(v, sub) for v in obj)
    return obj


def _layout(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


def _state(t: torch.Tensor) -> tuple:
    """What must be unchanged for a fixed leaf: version (None for inference-mode tensors, which
    have none), data pointer, storage offset, layout."""
    return (
        None if t.is_inference() else t._version,
        t.data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        t.stride(),
        t.dtype,
    )


class _Print:
    __slots__ = ("ref", "state")

    def __init__(self, t: torch.Tensor):
        self.ref = weakref.ref(t)
        self.state = _state(t)

    def matches(self, t: torch.Tensor) -> bool:
        return self.ref() is t and _state(t) == self.state


def _context(module: nn.Module | None) -> tuple:
    cuda_autocast = torch.is_autocast_enabled("cuda") if _autocast_takes_device() else torch.is_autocast_enabled()
    dtype = _autocast_dtype() if cuda_autocast else None
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        cuda_autocast,
        dtype,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        module.training if module is not None else None,
    )


@functools.lru_cache(None)
def _autocast_takes_device() -> bool:
    try:
        torch.is_autocast_enabled("cuda")
        return True
    except TypeError:
        return False


def _autocast_dtype() -> torch.dtype:
    getter = getattr(torch, "get_autocast_dtype", None)
    return getter("cuda") if getter is not None else torch.get_autocast_gpu_dtype()


def _tree_tensors(x: Any):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tree_tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tree_tensors(v)


def _tree_clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _tree_clone(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_tree_clone(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_tree_clone(v) for v in x)
    return x


# ---------------------------------------------------------------------------------------------
# capture backends


class CudaGraphBackend:
    """The real mechanism: warm-up on a side stream, ``torch.cuda.graph`` capture into the
    graph's own memory pool (or ``pool``), replay on the current stream."""

    def __init__(self, warmup: int = 1, pool=None, capture_error_mode: str = "global"):
        self.warmup = warmup
        self.pool = pool
        self.capture_error_mode = capture_error_mode

    def supports(self, tensors: list[torch.Tensor]) -> bool:
        return (
            torch.cuda.is_available()
            and any(t.is_cuda for t in tensors)
            and not torch.cuda.is_current_stream_capturing()
        )

    def can_vary(self, t: torch.Tensor) -> bool:
        """A varying argument must be on the device (a CPU tensor's value is baked in)."""
        return t.is_cuda

    def capture(self, run: Callable[[], Any], device: torch.device):
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=self.capture_error_mode):
                out = run()
        return graph, out

    def release(self, graph) -> None:
        torch.cuda.current_stream().synchronize()  # no replay of it still in flight
        graph.reset()


class EagerReplayBackend:
    """Graph semantics without CUDA: ``capture`` runs the closure once (its outputs are the
    static outputs), ``replay`` runs it again on the static buffers and copies the result into
    the static outputs in place. ``fail``: capture raises (to test the fallback). Records the
    captures, replays and releases."""

    def __init__(self, fail: bool = False, warmup: int = 0):
        self.fail = fail
        self.warmup = warmup
        self.captures = 0
        self.replays = 0
        self.releases = 0

    def supports(self, tensors: list[torch.Tensor]) -> bool:
        return True

    def can_vary(self, t: torch.Tensor) -> bool:
        return True

    def capture(self, run: Callable[[], Any], device: torch.device):
        if self.fail:
            raise RuntimeError("capture failed (EagerReplayBackend(fail=True))")
        for _ in range(self.warmup):
            run()
        out = run()
        self.captures += 1
        backend = self

        class _Graph:
            def replay(self):
                backend.replays += 1
                new = run()
                for dst, src in zip(_tree_tensors(out), _tree_tensors(new)):
                    dst.copy_(src)

        return _Graph(), out

    def release(self, graph) -> None:
        self.releases += 1


# ---------------------------------------------------------------------------------------------
# the wrapper


class _Entry:
    """One key's state: the last eager call's fingerprints (learning), or a graph."""

    def __init__(self) -> None:
        self.last: list[_Print] | None = None
        self.graph: Any = None  # the backend's graph (a torch.cuda.CUDAGraph on CUDA)
        self.static_in: dict[int, torch.Tensor] = {}  # leaf index -> static buffer (varying)
        self.fixed: list[tuple[int, _Print]] = []
        self.objects: list[Any] = []  # weakrefs or the objects themselves (not weakref-able)
        self.params: list[tuple[torch.Tensor, int]] = []
        self.first_param: torch.Tensor | None = None
        self.payloads: list[tuple[Any, list]] = []  # (bias cache entry, weakrefs of its tensors)
        self.out = None
        self.failed = False
        self.relearns = 0  # graphs invalidated before any replay, in a row
        self.replayed = False


class GraphedCall:
    """``fn`` (a module's bound forward) with its repeated calls replayed from CUDA graphs (see
    the module doc). ``module``: whose parameters' versions, ``training`` flag and FlashBias bias
    caches bound the graphs' validity. ``max_graphs``: graphs kept per wrapper (LRU).
    ``max_relearns``: a key whose graphs are invalidated this many times in a row before any
    replay runs eagerly from then on. ``ignore_params``: parameters whose in-place updates leave
    the graphs valid (a replay reads them in place, as an eager call would; e.g. the weights an
    optimizer trains between calls, where nothing derived from them is cached outside the graph).
    ``stats``: counts of eager calls, captures, replays, invalidations, failures."""

    def __init__(
        self,
        fn: Callable,
        module: nn.Module | None = None,
        *,
        backend=None,
        max_graphs: int = 2,
        max_relearns: int = 3,
        ignore_params: Iterable[torch.Tensor] = (),
        name: str | None = None,
    ):
        functools.update_wrapper(self, fn)  # inspect.signature follows __wrapped__
        self.fn = fn
        self._module = weakref.ref(module) if module is not None else None
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.max_graphs = max_graphs
        self.max_relearns = max_relearns
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self._ignored = {id(p) for p in ignore_params}
        self._flash_bias: list[FlashBiasModule] | None = None  # the FlashBias modules inside ``module``
        self.enabled = True
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.stats = {"eager": 0, "captures": 0, "replays": 0, "invalidated": 0, "failed": 0, "passthrough": 0}
        self._warned: set[str] = set()

    # -- bookkeeping

    @property
    def module(self) -> nn.Module | None:
        return self._module() if self._module is not None else None

    def reset(self) -> None:
        """Drop every graph and what was learned (the next call of each key is eager)."""
        for entry in self._entries.values():
            self._drop(entry)
        self._entries.clear()
        self._flash_bias = None

    def _drop(self, entry: _Entry) -> None:
        if entry.graph is not None:
            self.backend.release(entry.graph)
        entry.graph, entry.out, entry.static_in = None, None, {}
        entry.fixed, entry.objects, entry.params, entry.payloads = [], [], [], []
        entry.last = None

    def _warn(self, what: str, msg: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"{self.name}: {msg}", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"GraphedCall({self.name}, graphs={sum(e.graph is not None for e in self._entries.values())})"

    # -- the call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return self.fn(*args, **kwargs)
        tensors: list[torch.Tensor] = []
        objects: list[Any] = []
        spec: list = []
        _flatten((args, kwargs), tensors, objects, spec)
        module = self.module
        modes = self._modes(module)
        if (
            not tensors
            or not self.backend.supports(tensors)
            or (module is not None and module.training)
            or (torch.is_grad_enabled() and self._needs_grad(tensors, module))
            or "distill" in modes
        ):
            self.stats["passthrough"] += 1
            return self.fn(*args, **kwargs)
        key = (tuple(spec), tuple(_layout(t) for t in tensors), _context(module), modes)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self.max_graphs:
                _, old = self._entries.popitem(last=False)
                self._drop(old)
        else:
            self._entries.move_to_end(key)
        if entry.failed:
            self.stats["passthrough"] += 1
            return self.fn(*args, **kwargs)
        if entry.graph is not None:
            if self._valid(entry, tensors, objects, module):
                return self._replay(entry, tensors)
            self.stats["invalidated"] += 1
            if not entry.replayed:
                entry.relearns += 1
            self._drop(entry)
            if entry.relearns >= self.max_relearns:
                entry.failed = True
                self._warn(
                    "relearn",
                    f"the graph of a call was invalidated {entry.relearns} times before any "
                    "replay (its fixed inputs change every call): running it eagerly",
                )
                self.stats["passthrough"] += 1
                return self.fn(*args, **kwargs)
        if entry.last is None:  # call 1: eager, learn
            self.stats["eager"] += 1
            out = self.fn(*args, **kwargs)
            entry.last = [_Print(t) for t in tensors]
            return out
        return self._capture(entry, tensors, objects, module, args, kwargs)

    def _modes(self, module: nn.Module | None) -> tuple[str, ...]:
        """The ``mode`` of each FlashBias module inside ``module`` (part of the key: a graph
        replays the kernels of the modes it captured). A "distill" mode passes through: its bias
        loss (or its sample) is an attribute the wrapper sets (``last_distill_loss`` /
        ``last_distill_sample``), which a replay would not."""
        if module is None:
            return ()
        if self._flash_bias is None:
            from ..hosts.base import PatchedModule

            self._flash_bias = [
                m.flash_bias if isinstance(m, PatchedModule) else m
                for m in module.modules()
                if isinstance(m, (PatchedModule, FlashBiasModule))
            ]
        return tuple(m.mode for m in self._flash_bias)

    @staticmethod
    def _needs_grad(tensors, module) -> bool:
        if any(t.requires_grad for t in tensors):
            return True
        return module is not None and any(p.requires_grad for p in module.parameters())

    def _capture(self, entry: _Entry, tensors, objects, module, args, kwargs):
        assert entry.last is not None  # __call__ captures once the first call has learned
        varying = [i for i, (p, t) in enumerate(zip(entry.last, tensors)) if not p.matches(t)]
        entry.last = None
        if any(not self.backend.can_vary(tensors[i]) for i in varying):
            entry.failed = True
            self._warn("cpu", "a varying argument is a CPU tensor (a graph would bake its value in): running eagerly")
            return self.fn(*args, **kwargs)
        static = {i: tensors[i].clone() for i in varying}
        sub = {id(tensors[i]): static[i] for i in varying}
        c_args, c_kwargs = _substitute(args, sub), _substitute(kwargs, sub)
        fn = self.fn

        def run():
            return fn(*c_args, **c_kwargs)

        device = next((t.device for t in tensors if t.is_cuda), tensors[0].device)
        try:
            with _capture_autocast():
                graph, out = self.backend.capture(run, device)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager for this key
            entry.failed = True
            self.stats["failed"] += 1
            self._warn(
                "capture", f"CUDA graph capture failed ({type(e).__name__}: {e}); running this call eagerly from now on"
            )
            return self.fn(*args, **kwargs)
        self.stats["captures"] += 1
        entry.graph, entry.out, entry.static_in, entry.replayed = graph, out, static, False
        entry.fixed = [(i, _Print(t)) for i, t in enumerate(tensors) if i not in static]
        entry.objects = [_ref(o) for o in objects]
        if module is not None:
            entry.params = [(p, p._version) for p in module.parameters() if id(p) not in self._ignored]
            entry.first_param = next(module.parameters(), None)
            entry.payloads = [(c, [weakref.ref(t) for t in _tree_tensors(c.payload)]) for c in _bias_caches(module)]
        graph.replay()  # a capture does not run the kernels: the first output is a replay's
        self.stats["replays"] += 1
        return _tree_clone(out)

    def _valid(self, entry: _Entry, tensors, objects, module) -> bool:
        for i, p in entry.fixed:
            if not p.matches(tensors[i]):
                return False
        if len(objects) != len(entry.objects) or any(_deref(r) is not o for r, o in zip(entry.objects, objects)):
            return False
        for param, version in entry.params:
            if param._version != version:
                return False
        if module is not None and next(module.parameters(), None) is not entry.first_param:
            return False  # a module tree edited without ``reset`` (patch_model / unpatch_model reset)
        for cache, refs in entry.payloads:
            now = list(_tree_tensors(cache.payload))
            if len(now) != len(refs) or any(r() is not t for r, t in zip(refs, now)):
                return False
        return True

    def _replay(self, entry: _Entry, tensors):
        for i, buf in entry.static_in.items():
            buf.copy_(tensors[i])
        entry.graph.replay()
        entry.replayed, entry.relearns = True, 0
        self.stats["replays"] += 1
        return _tree_clone(entry.out)


class _Strong:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


def _ref(obj):
    try:
        return weakref.ref(obj)
    except TypeError:
        return _Strong(obj)


def _deref(r):
    return r.obj if isinstance(r, _Strong) else r()


def _bias_caches(module: nn.Module) -> list:
    """The FlashBias bias caches inside ``module`` holding a payload (the graph reads it)."""
    from ..modules.bias_cache import BiasCacheEntry

    out: list[BiasCacheEntry] = []
    for m in module.modules():
        c = getattr(m, "bias_cache", None)
        if isinstance(c, BiasCacheEntry) and c.payload is not None:
            out.append(c)
    return out


class _capture_autocast:
    """Under CUDA autocast: the same autocast with its weight-cast cache disabled."""

    def __enter__(self):
        enabled = torch.is_autocast_enabled("cuda") if _autocast_takes_device() else torch.is_autocast_enabled()
        self._ctx = torch.autocast("cuda", dtype=_autocast_dtype(), cache_enabled=False) if enabled else None
        if self._ctx is not None:
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------------------------
# installing on modules

_GRAPHED: weakref.WeakKeyDictionary[nn.Module, GraphedCall] = weakref.WeakKeyDictionary()


class GraphHandle:
    """The graphed modules of one ``graph_module`` / ``graph_diffusion`` call: ``calls`` (their
    GraphedCall, e.g. for ``stats``), ``reset()`` (drop the graphs), ``remove()`` (restore the
    modules' own forward)."""

    def __init__(self, calls: list[GraphedCall], modules: list[nn.Module]):
        self.calls = calls
        self._modules = [weakref.ref(m) for m in modules]

    def reset(self) -> None:
        for c in self.calls:
            c.reset()

    def remove(self) -> None:
        for ref, call in zip(self._modules, self.calls):
            call.reset()
            m = ref()
            if m is None:
                continue
            if m.__dict__.get("forward") is call:
                del m.forward
            _GRAPHED.pop(m, None)

    @property
    def stats(self) -> dict:
        total: dict = {}
        for c in self.calls:
            for k, v in c.stats.items():
                total[k] = total.get(k, 0) + v
        return total


def graph_module(module: nn.Module | list[nn.Module], **kwargs) -> GraphHandle:
    """Replace ``module.forward`` (each of a list) by a :class:`GraphedCall` of it (an instance
    attribute; the module's hooks still run around it on every call). ``kwargs`` go to
    GraphedCall (``backend``, ``max_graphs``, ...)."""
    modules = module if isinstance(module, (list, tuple)) else [module]
    calls = []
    for m in modules:
        if m in _GRAPHED:
            raise RuntimeError(f"{type(m).__name__} is already graphed: remove its handle first")
        call = GraphedCall(m.forward, m, name=f"{type(m).__name__}.forward", **kwargs)
        m.forward = call
        _GRAPHED[m] = call
        calls.append(call)
    return GraphHandle(calls, modules)


def graph_diffusion(model: nn.Module, *, host: str = "auto", **kwargs) -> GraphHandle:
    """CUDA-graph the per-step diffusion call of a host model (the adapter's
    ``graph_modules(model)``: Protenix's ``DiffusionModule``; Boltz-2's and OpenFold3's
    ``DiffusionModule`` too, untested on a GPU). Opt-in and reversible (``handle.remove()``);
    composes with ``patch_model`` in either order."""
    from ..hosts import detect_host, get_adapter

    adapter = get_adapter(detect_host(model) if host == "auto" else host)
    targets = adapter.graph_modules(model)
    if not targets:
        raise ValueError(f"found no diffusion module to graph in {type(model).__name__}")
    return graph_module(targets, **kwargs)


def graphed_calls(model: nn.Module) -> dict[str, GraphedCall]:
    """The graphed modules of ``model`` by path."""
    return {name: _GRAPHED[m] for name, m in model.named_modules() if m in _GRAPHED}


def reset_graphs(model: nn.Module) -> None:
    """Drop the graphs of every graphed module of ``model`` (patch_model / unpatch_model call it:
    a graph would replay the kernels of the modules it captured)."""
    for call in graphed_calls(model).values():
        call.reset()
