import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    out = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_never_imports_slicer_or_qt():
    import re

    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk|PySide6)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "ldfsam").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
