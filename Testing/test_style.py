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


def test_no_array_view_of_a_temporary_image():
    """SimpleITK's array view does not keep its image alive: a view of an image nobody holds reads freed memory
    (the first voxels of ``ldfsam demo``'s truth and of two tests' arrays were allocator pointers and NaN)."""
    import re

    pattern = re.compile(r"GetArrayViewFromImage\(\s*[\w.]+\(")
    folders = ("ldfsam", "LDFSAMSegment", "LDFSAMTrain", "benchmarks", "scripts", "Testing")
    offenders = [f"{p.relative_to(REPO)}:{text[:m.start()].count(chr(10)) + 1}"
                 for folder in folders for p in sorted((REPO / folder).rglob("*.py"))
                 for text in [p.read_text(encoding="utf-8")] for m in pattern.finditer(text)]
    assert offenders == []
