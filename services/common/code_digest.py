"""Digests of the code that computes something: what makes a cached result stale.

A cached job result or step record is valid only as long as the code that computed it is
unchanged. A package version does not say that (it stays the same through behaviour
changes), so job ids and step keys hash a digest of the source files instead:

- **Roots.** For a service, every module of its package (``services/<name>/``; registries
  import their builders by name, so all of them count) except the human entry points
  ``cli`` and ``__main__``, plus the package's data files (e.g. report templates; ``*.md``
  aside). For an orchestrator step kind, the service's roots, or for a local kind the
  modules its executor imports (orchestrator/steps.py decides; see ``digest``'s ``extra``).
- **Closure.** Every project module (packages ``services``, ``synthaug`` and ``ingest``) those roots
  import, transitively, found by reading their source with ``ast``: module-level and
  function-level imports alike, and every parent package's ``__init__`` (Python runs it).
- **Transport.** Modules that only move requests and results between processes
  (``TRANSPORT_MODULES``: the gRPC runtime, the job manager, event logs, the client,
  logging, transport security, request limits, this module) are not followed: a retry or
  a TLS option cannot change a result, and counting them would recompute every step on
  every infrastructure change.
- **Digest.** SHA-256 over the sorted (path relative to its package root, SHA-256 of the
  file's bytes) of the closure. Any byte counts, comments included: a stale cache is worse
  than a recomputation.

Third-party packages (torch, numpy, …) are not part of the digest: the image build pins
them, and an orchestrator without torch must name the same steps as one with it.

Computed once per process (``service_digest`` is cached); the whole project is read in well
under a second.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

#: Top-level packages whose modules are followed (others are third-party or the orchestrator).
PROJECT_PACKAGES = ("services", "synthaug", "ingest")
#: Service packages (services/<name>/) whose code computes jobs.
SERVICES = ("compositor", "gan", "segmenter", "evaluator")
#: Modules that move requests and results but compute nothing a result depends on.
TRANSPORT_MODULES = frozenset(
    {
        "services.common.runtime",
        "services.common.jobs",
        "services.common.events",
        "services.common.client",
        "services.common.logs",
        "services.common.cli_support",
        "services.common.code_digest",
        "services.common.security",  # TLS and tokens decide who may ask, not the answer
        "services.common.limits",  # a bound refuses a request; it never changes a result
    }
)
#: Entry points for people, not for jobs: never roots.
ENTRY_MODULES = frozenset({"__main__", "cli"})
#: Files of a root package that are neither code nor data a job reads.
IGNORED_SUFFIXES = (".pyc", ".pyi", ".md")

Reader = Callable[[Path], bytes]


@dataclass(frozen=True)
class CodeDigest:
    """A digest and the files it covers (paths relative to the project root, sorted)."""

    digest: str
    files: tuple[str, ...]

    @property
    def short(self) -> str:
        return self.digest[:12]


def _package_dirs() -> dict[str, Path]:
    """Where each project package lives (its directory), found without importing it."""
    out = {}
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"project package {name!r} not found on sys.path")
        out[name] = Path(next(iter(spec.submodule_search_locations))).resolve()
    return out


class CodeIndex:
    """The project's modules, their imports and their digests, read from source files.

    `read` returns a file's bytes (tests pass one that edits a file, to see which digests
    change)."""

    def __init__(self, packages: Mapping[str, Path] | None = None, read: Reader | None = None):
        self.packages = dict(packages) if packages is not None else _package_dirs()
        self._read: Reader = read or (lambda path: path.read_bytes())
        self._imports: dict[str, frozenset[str]] = {}
        self._file_hashes: dict[Path, str] = {}

    # -- modules and files --------------------------------------------------------------------

    def module_file(self, module: str) -> Path | None:
        """The source file of a project module (a package's ``__init__.py``), None otherwise."""
        top, _, rest = module.partition(".")
        base = self.packages.get(top)
        if base is None:
            return None
        path = base.joinpath(*rest.split(".")) if rest else base
        if path.with_suffix(".py").is_file() and rest:
            return path.with_suffix(".py")
        init = path / "__init__.py"
        return init if init.is_file() else None

    def is_package(self, module: str) -> bool:
        file = self.module_file(module)
        return file is not None and file.name == "__init__.py"

    def relative(self, path: Path) -> str:
        """A file's path relative to the directory holding the project packages."""
        for base in self.packages.values():
            try:
                return path.relative_to(base.parent).as_posix()
            except ValueError:
                continue
        return path.as_posix()

    def package_modules(self, package: str) -> list[str]:
        """Every module under a project package (itself included), entry points aside."""
        root = self.module_file(package)
        if root is None or root.name != "__init__.py":
            return []
        out = []
        for path in sorted(root.parent.rglob("*.py")):
            if "__pycache__" in path.parts or path.stem in ENTRY_MODULES:
                continue
            parts = path.relative_to(root.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(".".join((package, *parts)))
        return out

    def package_data(self, package: str) -> list[Path]:
        """A package's files that are not Python modules (templates and the like)."""
        root = self.module_file(package)
        if root is None or root.name != "__init__.py":
            return []
        return [
            p
            for p in sorted(root.parent.rglob("*"))
            if p.is_file() and p.suffix != ".py" and not p.name.endswith(IGNORED_SUFFIXES) and "__pycache__" not in p.parts
        ]

    # -- imports ------------------------------------------------------------------------------

    def imports_of(self, module: str) -> frozenset[str]:
        """The project modules `module` imports anywhere in its source (functions included)."""
        cached = self._imports.get(module)
        if cached is not None:
            return cached
        file = self.module_file(module)
        found: set[str] = set()
        if file is not None:
            tree = ast.parse(self._read(file), filename=str(file))
            found = self.imports_in(tree, module)
        result = frozenset(found)
        self._imports[module] = result
        return result

    def imports_in(self, tree: ast.AST, module: str = "") -> set[str]:
        """The project modules imported anywhere in `tree` (the code of `module`, for
        relative imports)."""
        package = module if self.is_package(module) else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".") if package else []
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    base = ".".join([*anchor, *(node.module.split(".") if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if self.module_file(sub) is not None else base)
        return {m for m in found if m.partition(".")[0] in self.packages and self.module_file(m) is not None}

    def function_parts(self, path: Path, module: str, names: Iterable[str]) -> tuple[dict[str, bytes], set[str]]:
        """What the functions `names` of module `module` (source file `path`) compute with:
        their source and that of the module-level functions they call, transitively, as
        {"<module path>:<function>": source}; and the project modules they import (in their
        bodies) or use through a name the module imports."""
        source = self._read(path)
        tree = ast.parse(source, filename=str(path))
        text = source.decode("utf-8")
        functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        imported: dict[str, str] = {}
        for statement in tree.body:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    imported[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                for alias in statement.names:
                    sub = f"{statement.module}.{alias.name}"
                    imported[alias.asname or alias.name] = sub if self.module_file(sub) is not None else statement.module
        label = module.replace(".", "/") + ".py"
        parts: dict[str, bytes] = {}
        modules: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if f"{label}:{name}" in parts:
                continue
            node = functions.get(name)
            if node is None:
                raise KeyError(f"{label} has no module-level function {name!r}")
            parts[f"{label}:{name}"] = (ast.get_source_segment(text, node) or "").encode("utf-8")
            modules |= self.imports_in(node, module)
            for used in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
                if used in functions:
                    todo.append(used)
                elif used in imported and self.module_file(imported[used]) is not None:
                    modules.add(imported[used])
        return parts, modules

    def closure(self, roots: Iterable[str]) -> set[str]:
        """`roots`, every parent package, and every project module they import, transitively
        (transport modules are included when named but not followed)."""
        todo = list(roots)
        seen: set[str] = set()
        while todo:
            module = todo.pop()
            if module in seen or self.module_file(module) is None:
                continue
            seen.add(module)
            parts = module.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
            if module not in TRANSPORT_MODULES:
                todo.extend(self.imports_of(module))
        return {m for m in seen if m not in TRANSPORT_MODULES}

    # -- digests ------------------------------------------------------------------------------

    def file_hash(self, path: Path) -> str:
        cached = self._file_hashes.get(path)
        if cached is None:
            cached = self._file_hashes[path] = hashlib.sha256(self._read(path)).hexdigest()
        return cached

    def digest(self, modules: Iterable[str], data_files: Iterable[Path] = (), extra: Mapping[str, bytes] | None = None) -> CodeDigest:
        """The digest of the closure of `modules`, plus `data_files` and named `extra` parts
        (e.g. the source of the orchestrator function that builds a step's request)."""
        files = {self.relative(f): f for f in (self.module_file(m) for m in self.closure(modules)) if f is not None}
        files.update({self.relative(p): p for p in data_files})
        h = hashlib.sha256()
        for name in sorted(files):
            h.update(f"{name}\0{self.file_hash(files[name])}\n".encode())
        names = sorted(files)
        for label, payload in sorted((extra or {}).items()):
            h.update(f"{label}\0{hashlib.sha256(payload).hexdigest()}\n".encode())
            names.append(label)
        return CodeDigest(h.hexdigest(), tuple(names))

    def service_roots(self, service: str) -> list[str]:
        """The modules a service's jobs run: every module of its package (entry points aside)."""
        return self.package_modules(f"services.{service}") if service in SERVICES else []

    def service_digest(self, service: str) -> CodeDigest:
        """The digest of a service's code. A name that is no service package (a test's probe
        service) has the digest of no code: its job ids then depend on the request alone."""
        data = self.package_data(f"services.{service}") if service in SERVICES else []
        return self.digest(self.service_roots(service), data)


@functools.lru_cache(maxsize=1)
def default_index() -> CodeIndex:
    """The index of the code this process runs (read once)."""
    return CodeIndex()


@functools.cache
def service_digest(service: str) -> str:
    """The code digest of `service` in this process (computed once)."""
    return default_index().service_digest(service).digest
