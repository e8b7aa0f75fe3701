"""Import order (ruff's isort rules) and unused imports, checked over the whole tree with the settings in
pyproject.toml: a test, so that CI fails on them like on any other fault."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_are_sorted_and_used():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ruff check (fix with `ruff check --fix .`):\n{out.stdout}{out.stderr}"
