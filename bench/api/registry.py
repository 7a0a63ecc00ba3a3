"""Decorator registries for KD methods, dataset adapters and backbones.

Adding a method or a dataset means adding one file to ``methods/`` or ``datasets/`` with a
``@register_method`` / ``@register_dataset`` decorated class: the built-in modules are
imported on first use, so nothing else needs editing; backbones register the same way with
``@register_backbone`` (built-ins in ``bench/models/``). Plug-ins from outside the repository
register through the ``cmkd_bench.methods`` / ``cmkd_bench.datasets`` / ``cmkd_bench.backbones``
entry point groups or ``--plugin file.py``; every
entry remembers where it came from (``source``) and, for plug-ins, a hash of its source code
so that records made with different versions of a plug-in can be told apart.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from bench.api.errors import BenchError
from bench.api.names import check_component, resolve_path

T = TypeVar("T")


METHOD_ENTRY_POINT_GROUP = "cmkd_bench.methods"


DATASET_ENTRY_POINT_GROUP = "cmkd_bench.datasets"


BACKBONE_ENTRY_POINT_GROUP = "cmkd_bench.backbones"


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    source: str  # "builtin", "entry-point:<dist>", "plugin:<path>"
    source_hash: str | None = None


class Registry(Generic[T]):
    """A name -> class table with helpful errors."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str):
        self.kind = kind
        self._builtin_package = builtin_package
        self._group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._loading_source: tuple[str, str | None] = ("builtin", None)

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = (name or getattr(obj, "name", None) or obj.__name__).lower()  # type: ignore[attr-defined]
            # names become parts of run ids and file names, and scopes of --set SCOPE.KEY (no '.')
            check_component(key, f"{self.kind} name")
            if "." in key:
                raise BenchError(f"{self.kind} name {key!r} may not contain '.' (it is the scope in --set {key}.KEY=VALUE)")
            src, h = self._loading_source
            if src == "builtin" and not _defined_in_package(obj, self._builtin_package):
                # Registered from a module that is not one of ours and not loaded through a
                # plug-in path (e.g. a notebook or test): mark it as such.
                src = f"runtime:{getattr(obj, '__module__', '?')}"
                h = _hash_source_of(obj)
            existing = self._entries.get(key)
            if existing is not None and existing.obj is not obj:
                raise BenchError(
                    f"{self.kind} {key!r} is registered twice: by {existing.source} and by {src}"
                )
            try:
                obj.name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            self._entries[key] = Entry(key, obj, src, h)
            return obj

        return deco

    # -- loading ------------------------------------------------------------------------------
    def load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._builtin_package)
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):
                continue
            importlib.import_module(f"{self._builtin_package}.{mod.name}")
        for ep in _entry_points(self._group):
            dist = getattr(ep.dist, "name", None) or ep.value
            try:
                self._loading_source = (f"entry-point:{dist}", None)
                obj = ep.load()
            except (Exception, SystemExit) as exc:  # a broken third-party plug-in must not break the tool
                why = f"it called exit ({exc.code!r})" if isinstance(exc, SystemExit) else str(exc)
                raise BenchError(f"cannot load {self.kind} plug-in entry point {ep.name!r} ({ep.value}): {why}") from exc
            finally:
                self._loading_source = ("builtin", None)
            # The entry point may be a module (whose import registered things) or a class.
            if inspect.isclass(obj) and obj.__name__.lower() not in self._entries and getattr(obj, "name", None) not in self._entries:
                self._loading_source = (f"entry-point:{dist}", _hash_source_of(obj))
                try:
                    self.register(ep.name)(obj)
                finally:
                    self._loading_source = ("builtin", None)
            else:
                for e in self._entries.values():
                    if e.source == f"entry-point:{dist}" and e.source_hash is None:
                        e.source_hash = _hash_source_of(e.obj)

    def load_plugin_file(self, path: str | Path) -> list[str]:
        """Import a plug-in file; returns the names it registered here (see :func:`load_plugin_file`)."""
        return load_plugin_file(path).get(self.kind, [])

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self.load_builtins()
        key = name.lower()
        if key not in self._entries:
            raise BenchError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        self.load_builtins()
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self.load_builtins()
        return iter(list(self._entries.values()))

    def __contains__(self, name: str) -> bool:
        self.load_builtins()
        return name.lower() in self._entries

    def unregister(self, name: str) -> None:
        """Remove an entry (used by tests that register throw-away classes)."""
        self._entries.pop(name.lower(), None)


def _entry_points(group: str) -> list[Any]:
    try:
        return list(importlib.metadata.entry_points(group=group))
    except Exception:  # pragma: no cover - broken metadata in the environment
        return []


def _defined_in_package(obj: Any, package: str) -> bool:
    return getattr(obj, "__module__", "").startswith(package + ".")


def _hash_source_of(obj: Any) -> str | None:
    try:
        src = inspect.getsource(inspect.getmodule(obj))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return hashlib.sha256(src.encode()).hexdigest()[:16]


METHODS: Registry[Any] = Registry("method", "bench.methods", METHOD_ENTRY_POINT_GROUP)


DATASETS: Registry[Any] = Registry("dataset", "bench.datasets", DATASET_ENTRY_POINT_GROUP)


register_method = METHODS.register


METHOD_GROUPS = ("all", "controls")
"""Names ``--methods`` expands: ``all`` is every KD method and w/o KD (every registered method
outside the ``Control`` category, the zoo included), ``controls`` the control methods (label
smoothing, Tf-KD's virtual teacher); ``all,controls`` both. A name that is a group never names a
method; compositions (``dkd+rkd``) are never in a group."""


def select_methods(text: str) -> list[str]:
    """``--methods`` -> method names in registration order (groups expanded, duplicates dropped,
    every name checked; a composition ``a+b`` checked and in its canonical order, see
    :mod:`bench.api.compose`); an empty list when ``text`` names nothing."""
    from bench.api.compose import canonical_name, is_composition
    from bench.api.method import CONTROL

    out: list[str] = []
    for item in (t.strip().lower() for t in (text or "").split(",")):
        if not item:
            continue
        if is_composition(item):
            names = [canonical_name(item, METHODS)]
        elif item in METHOD_GROUPS:
            ctl = item == "controls"
            names = [e.name for e in METHODS.entries() if (getattr(e.obj, "category", None) == CONTROL) == ctl]
        else:
            names = [METHODS.entry(item).name]
        out += [n for n in names if n not in out]
    return out


register_dataset = DATASETS.register


BACKBONES: Registry[Any] = Registry("backbone", "bench.models", BACKBONE_ENTRY_POINT_GROUP)
"""Networks by name (``train.teacher_backbone`` / ``train.student_backbone``): factories with a
``Params`` dataclass and ``build(params, spec, num_classes)`` (see :mod:`bench.models.registry`)."""


register_backbone = BACKBONES.register


REGISTRIES: list[Registry[Any]] = [METHODS, DATASETS, BACKBONES]
"""Every registry a plug-in file may add to."""


def load_plugin_file(path: str | Path) -> dict[str, list[str]]:
    """Import a plug-in file once (``--plugin``); it may register methods, datasets, backbones or any
    mix. Every entry remembers the file and a hash of it. Returns ``{kind: [names]}``; a file that
    registers nothing is an error (a typo in a decorator would otherwise go unnoticed)."""
    for reg in REGISTRIES:
        reg.load_builtins()
    p = resolve_path(path, "--plugin")
    if not p.is_file():
        raise BenchError(f"--plugin {path}: no such file")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    mod_name = f"cmkd_bench_plugin_{digest}"
    if mod_name in sys.modules:
        return {reg.kind: [n for n, e in reg._entries.items() if e.source == f"plugin:{p}"] for reg in REGISTRIES}
    before = {reg.kind: set(reg._entries) for reg in REGISTRIES}
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    for reg in REGISTRIES:
        reg._loading_source = (f"plugin:{p}", digest)
    try:
        spec.loader.exec_module(module)
    except BenchError:
        del sys.modules[mod_name]
        raise
    except SystemExit as exc:  # exit() in a plug-in must not end bench silently, with a success status
        del sys.modules[mod_name]
        raise BenchError(f"--plugin {path}: importing it called exit ({type(exc).__name__}({exc.code!r})); a "
                         f"plug-in file should only define and register") from None
    except Exception as exc:
        del sys.modules[mod_name]
        raise BenchError(f"--plugin {path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for reg in REGISTRIES:
            reg._loading_source = ("builtin", None)
    new = {reg.kind: sorted(set(reg._entries) - before[reg.kind]) for reg in REGISTRIES}
    if not any(new.values()):
        kinds = ", ".join(f"@register_{reg.kind}" for reg in REGISTRIES)
        raise BenchError(f"--plugin {path}: the file registered nothing (use {kinds})")
    return new

