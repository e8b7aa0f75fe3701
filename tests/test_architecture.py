"""The package table of DESIGN §1, enforced on the source: who may import whom, no reaching into another package's
private names, one cache-folder default, and every package shipped by ``pyproject.toml``.

The imports of every ``.py`` under ``vlm``, ``features``, ``pretraining`` and ``downstream`` are read with ``ast``
(nothing is imported): ``import a.b``, ``from a import b``, relative imports resolved against the module's package,
and imports inside functions (marked *lazy*). Each failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm", "features", "pretraining", "downstream")  # the first-party top-level packages


@dataclass(frozen=True)
class Rule:
    """What the modules of ``scope`` may import. The most specific scope governs a module (``vlm.data`` over ``vlm``).

    A first-party import is allowed when its module is one of ``may_import`` or inside one (``vlm`` allows
    ``vlm.models.tasks``), or, only inside a function, one of ``may_import_lazily``. ``third_party`` (when not None)
    lists the only non-first-party modules allowed besides the stdlib.
    """

    scope: str
    may_import: tuple[str, ...]
    why: str
    may_import_lazily: tuple[str, ...] = ()
    third_party: tuple[str, ...] | None = None


# DESIGN §1, the package table, as data. Read it beside the table: same rows, same words.
RULES = (
    Rule("vlm", may_import=("vlm",),
         why="vlm imports features/pretraining/downstream only from the command line (vlm/cli.py, vlm/commands.py), "
             "lazily"),
    Rule("vlm.cli", may_import=("vlm", "features.errors"), may_import_lazily=("features", "pretraining", "downstream"),
         why="the CLI parses and dispatches (features.errors at the top, for its error formatting)"),
    Rule("vlm.commands", may_import=("vlm",), may_import_lazily=("features", "pretraining", "downstream"),
         why="each subcommand imports the other packages inside its function"),
    Rule("vlm.data", may_import=("vlm.data", "vlm.batch", "vlm.errors", "vlm.io"),
         third_party=("numpy", "torch", "easy_vqa", "PIL"),
         why="vlm.data imports the stdlib, numpy, torch, easy_vqa, pillow (the generated worlds' PNGs), vlm.batch, "
             "vlm.errors, vlm.io only: no models, no "
             "engine, no vlm.config, no features, no task packages"),
    Rule("features", may_import=("features",),
         why="features imports nothing of vlm, pretraining or downstream"),
    Rule("pretraining", may_import=("pretraining", "vlm", "features"),
         why="pretraining imports vlm (incl. vlm.data) and features; it never imports downstream"),
    Rule("downstream", may_import=("downstream", "vlm", "features", "pretraining.run"),
         why="downstream imports vlm (incl. vlm.data), features, and of pretraining only pretraining.run (the "
             "ablation's default pipeline)"),
)

# The cache folder of the built-in features has one default, and one place reads VLM_CACHE from the environment.
CACHE_DEFAULT_AT = ("features/builtin.py", "default_cache_dir")  # (file, function): where ".cache"/"vlm" may appear
VLM_CACHE_READERS = (("features/builtin.py", "default_cache_dir"), ("vlm/commands.py", None))  # None: anywhere in it


# ---------------------------------------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository root
    line: int
    importer: str  # dotted module name of the file
    target: str  # the module imported, resolved (``from a import b`` is ``a.b`` when that is a module, else ``a``)
    bound: str  # the dotted path of what the local name refers to (``import a.b``: ``a``; ``from a import b``: ``a.b``)
    local: str  # the local name bound
    name: str | None  # the name taken by ``from ... import name``
    lazy: bool  # inside a function
    text: str  # the import as written (one name)

    def __str__(self) -> str:
        resolved = "" if self.target in self.text else f" (= {self.target})"
        return f"{self.path}:{self.line}: {'lazy ' if self.lazy else ''}`{self.text}`{resolved}"


def _files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> frozenset[str]:
    return frozenset(_module_name(p) for p in _files())


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _walk(node: ast.AST, in_function: bool = False):
    """Yield ``(node, in_function)`` for every node below ``node``."""
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _resolve_from(package: str, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``package``."""
    if not level:
        return module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def _imports(path: Path) -> list[Import]:
    module, rel = _module_name(path), _rel(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, lazy in _walk(_tree(path)):
        if isinstance(node, ast.Import):
            for a in node.names:
                text = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                local, bound = (a.asname, a.name) if a.asname else (a.name.split(".")[0], a.name.split(".")[0])
                found.append(Import(rel, node.lineno, module, a.name, bound, local, None, lazy, text))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(package, node.level, node.module)
            written = "." * node.level + (node.module or "")
            for a in node.names:
                sub = f"{base}.{a.name}"
                target = sub if sub in _modules() else base
                text = f"from {written} import {a.name}" + (f" as {a.asname}" if a.asname else "")
                found.append(Import(rel, node.lineno, module, target, sub, a.asname or a.name, a.name, lazy, text))
    return found


@cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in _files() for imp in _imports(path))


def _rule_of(module: str) -> Rule:
    matching = [r for r in RULES if _in(module, r.scope)]
    assert matching, f"no rule in RULES governs {module}"
    return max(matching, key=lambda r: len(r.scope))


def _first_party(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


# ---------------------------------------------------------------------------------------------------------- the tests


def test_the_walk_sees_every_package_and_the_known_imports():
    """Guards the walker itself: it finds files in every package, lazy imports, and resolves relative imports."""
    files = {_rel(p) for p in _files()}
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in files
    imports = _all_imports()
    assert any(i.importer == "vlm.commands" and i.lazy and _in(i.target, "downstream") for i in imports)
    assert any(i.importer == "vlm.cli" and not i.lazy and i.target == "features.errors" for i in imports)
    assert _resolve_from("vlm.data", 1, "vqa") == "vlm.data.vqa"  # from .vqa import x, in vlm/data/*.py
    assert _resolve_from("vlm.data", 2, "batch") == "vlm.batch"  # from ..batch import x
    assert _resolve_from("features.store", 1, None) == "features.store"  # from . import writer
    assert _resolve_from("", 0, "vlm.io") == "vlm.io"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.scope)
def test_package_table(rule: Rule):
    violations = []
    for imp in _all_imports():
        if _rule_of(imp.importer) is not rule:
            continue
        if _first_party(imp.target):
            if any(_in(imp.target, allowed) for allowed in rule.may_import):
                continue
            if imp.lazy and any(_in(imp.target, allowed) for allowed in rule.may_import_lazily):
                continue
            if any(_in(imp.target, allowed) for allowed in rule.may_import_lazily):
                violations.append(f"{imp}  (allowed only inside a function)")
            else:
                violations.append(str(imp))
        elif rule.third_party is not None:
            top = imp.target.split(".")[0]
            if imp.target and top not in sys.stdlib_module_names and top not in rule.third_party:
                violations.append(f"{imp}  (third-party module not in {rule.third_party})")
    assert not violations, f"{rule.why}; these imports break it:\n  " + "\n  ".join(violations)


def test_downstream_imports_of_pretraining_are_exactly_pretraining_run():
    """DESIGN: downstream may use pretraining only through ``pretraining.run`` (the ablation's default pipeline)."""
    bad = [str(i) for i in _all_imports()
           if _in(i.importer, "downstream") and _in(i.target, "pretraining") and i.target != "pretraining.run"]
    assert not bad, "downstream imports pretraining other than as pretraining.run:\n  " + "\n  ".join(bad)


def test_first_party_imports_resolve():
    """Every first-party import names a module that exists (catches stale imports after a move or a rename)."""
    bad = []
    for imp in _all_imports():
        if _first_party(imp.target) and imp.target not in _modules():
            bad.append(f"{imp}  (no module {imp.target})")
        if imp.text.startswith("from .") and not _first_party(imp.target):
            bad.append(f"{imp}  (relative import leaves the packages)")
    assert not bad, "imports of modules that do not exist:\n  " + "\n  ".join(bad)


def _bound_names(path: Path) -> dict[str, str]:
    """Local name -> the dotted first-party path an import in this file binds it to (best effort: one scope a file)."""
    return {i.local: i.bound for i in _imports(path) if _first_party(i.target) and i.name != "*"}


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def test_no_private_names_across_packages():
    """No module takes a ``_private`` name from a module of another top-level package, by import or by attribute."""
    bad = []
    for imp in _all_imports():
        top = imp.importer.split(".")[0]
        if not _first_party(imp.target) or imp.target.split(".")[0] == top:
            continue
        private = [p for p in imp.target.split(".") if _is_private(p)]
        if imp.name and _is_private(imp.name):
            private.append(imp.name)
        if private:
            bad.append(f"{imp}  (private: {', '.join(private)})")
    for path in _files():
        top, rel = _module_name(path).split(".")[0], _rel(path)
        bound = _bound_names(path)
        for node, _ in _walk(_tree(path)):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            chain = _dotted(node)
            if not chain or chain[0] not in bound:
                continue
            full = ".".join([bound[chain[0]], *chain[1:]])
            if full.split(".")[0] != top:
                bad.append(f"{rel}:{node.lineno}: `{ast.unparse(node)}` (= {full})")
    assert not bad, "private names of another package used:\n  " + "\n  ".join(bad)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are bare expression statements (docstrings, attribute docs)."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}


def _enclosing_functions(tree: ast.Module) -> dict[int, str]:
    """id(node) -> the name of the innermost function holding it."""
    owner: dict[int, str] = {}

    def visit(node: ast.AST, fn: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            if inner is not None:
                owner[id(child)] = inner
            visit(child, inner)

    visit(tree, None)
    return owner


def _statements(tree: ast.Module):
    """Every statement with the string constants of its own expressions (not those of nested statements)."""
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.stmt):
            continue
        consts, todo = [], list(ast.iter_child_nodes(stmt))
        while todo:
            node = todo.pop()
            if isinstance(node, ast.stmt):
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                consts.append(node)
            todo.extend(ast.iter_child_nodes(node))
        yield stmt, consts


VLM_CACHE_FOLDER = re.compile(r"\.cache[/\\]+vlm\b")


def test_cache_folder_default_appears_once():
    """``~/.cache/vlm`` is spelt once, in ``features.builtin.default_cache_dir``; everything else asks that function."""
    found = []
    for path in _files():
        tree, rel = _tree(path), _rel(path)
        docs, owner = _docstrings(tree), _enclosing_functions(tree)
        for stmt, consts in _statements(tree):
            values = {c.value for c in consts if id(c) not in docs}
            if any(VLM_CACHE_FOLDER.search(v) for v in values) or (".cache" in values and "vlm" in values):
                found.append((rel, stmt.lineno, owner.get(id(stmt)), ast.unparse(stmt).splitlines()[0]))
    where = "\n  ".join(f"{r}:{ln} (in {fn or 'module level'}): `{src}`" for r, ln, fn, src in found)
    assert [(r, fn) for r, _, fn, _ in found] == [CACHE_DEFAULT_AT], (
        f"the vlm cache folder must be built once, in {CACHE_DEFAULT_AT[0]}'s {CACHE_DEFAULT_AT[1]}(); "
        f"found:\n  {where}")


def test_vlm_cache_is_read_in_one_place():
    """The ``VLM_CACHE`` environment variable is looked up only by ``default_cache_dir`` and the command line."""
    bad = []
    for path in _files():
        tree, rel = _tree(path), _rel(path)
        docs, owner = _docstrings(tree), _enclosing_functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "VLM_CACHE" and id(node) not in docs:
                fn = owner.get(id(node))
                if not any(rel == f and (want is None or fn == want) for f, want in VLM_CACHE_READERS):
                    bad.append(f"{rel}:{node.lineno} (in {fn or 'module level'}): `\"VLM_CACHE\"`")
    assert not bad, (f"VLM_CACHE may be read only in {VLM_CACHE_READERS}; also read at:\n  " + "\n  ".join(bad))


def test_every_package_is_shipped():
    """Each folder with an ``__init__.py`` is in ``[tool.setuptools] packages`` (listed explicitly, see pyproject)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = set(setuptools.get("package-dir", {})) - {""}
    on_disk = {_module_name(p) for p in _files() if p.name == "__init__.py"}
    missing = sorted(on_disk - listed)
    assert not missing, f"packages not listed in pyproject.toml [tool.setuptools] packages: {missing}"
    stale = sorted(p for p in listed - on_disk
                   if p.split(".")[0] in PACKAGES and not any(_in(p, m) for m in mapped))
    assert not stale, f"pyproject.toml [tool.setuptools] packages lists folders that are not packages: {stale}"
    no_init = sorted(_rel(d) for d in {p.parent for p in _files()} if not (d / "__init__.py").exists())
    assert not no_init, f"folders with .py files but no __init__.py (setuptools would not ship them): {no_init}"
