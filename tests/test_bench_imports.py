"""Every ``bench/*.py`` script imports: a moved or renamed name in the packages breaks the test, not the next benchmark.

Each script is loaded from its file under a module name that is not ``"__main__"``, so its
``if __name__ == "__main__": main()`` does not run; only what the script does at import time runs. A script that
benchmarks at import time (module-level loops, model building, prints) fails first, by a look at its source, naming
the lines: running it here would take minutes.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_SCRIPTS = sorted((ROOT / "bench").glob("*.py"))

# Module-level calls a script may make while importing: cheap set-up of the process, not work.
SETUP_CALLS = ("sys.path.", "os.environ.", "warnings.", "logging.", "Path(")
# Calls into these (or into the script's own functions) from a module-level assignment are work.
HEAVY_ROOTS = ("torch", "vlm", "features", "pretraining", "downstream", "np", "numpy")


def _is_main_guard(node: ast.If) -> bool:
    src = ast.unparse(node.test).replace("'", '"')
    return src in ('__name__ == "__main__"', '"__main__" == __name__')


def _import_time_work(script: Path) -> list[str]:
    """The module-level statements of ``script`` that do work when it is imported (best effort)."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found: list[ast.stmt] = []

    def heavy_call(node: ast.AST) -> bool:
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            callee = ast.unparse(call.func)
            if callee.split(".")[0] in HEAVY_ROOTS or callee in own:
                return True
        return False

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                              ast.Pass)):
                continue
            if isinstance(s, ast.If):
                if not _is_main_guard(s):
                    visit(s.body)
                    visit(s.orelse)
            elif isinstance(s, ast.Try):
                visit(s.body + [h for hd in s.handlers for h in hd.body] + s.orelse + s.finalbody)
            elif isinstance(s, ast.Expr):
                if isinstance(s.value, ast.Constant):
                    continue  # docstring
                if not (isinstance(s.value, ast.Call) and ast.unparse(s.value.func).startswith(SETUP_CALLS)):
                    found.append(s)
            elif isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                if s.value is not None and heavy_call(s.value):
                    found.append(s)
            else:  # loops, with-blocks, ...
                found.append(s)

    visit(tree.body)
    rel = script.relative_to(ROOT).as_posix()
    return [f"{rel}:{s.lineno}: `{ast.unparse(s).splitlines()[0][:100]}`" for s in found]


def test_there_are_bench_scripts():
    assert BENCH_SCRIPTS, f"no scripts found in {ROOT / 'bench'}"


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports(script: Path):
    work = _import_time_work(script)
    assert not work, (f"{script.name} does its work at import time (move it into main(), called under "
                      "`if __name__ == \"__main__\":`), so importing it here would run the benchmark:\n  "
                      + "\n  ".join(work))
    name = f"bench_import_check_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None, f"cannot load {script}"
    module = importlib.util.module_from_spec(spec)
    saved_path, saved_env = list(sys.path), dict(os.environ)  # some scripts set sys.path / environment defaults
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
    assert module.__name__ != "__main__"
