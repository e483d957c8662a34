"""Suite-wide set-up: no network (in this process and every process it starts), paths to shared data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_NONET = Path(__file__).resolve().parent / "_nonet"

# Set before anything imports ultralytics or torch, and inherited by every subprocess the tests start.
os.environ["LDFSAM_TEST_NO_NETWORK"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_NONET), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Never the developer's own LDFSAM_HOME (their models, their measured precision): the suite's own folder.
os.environ["LDFSAM_HOME"] = str(REPO / ".pytest_cache" / "ldfsam-home")
sys.path.insert(0, str(_NONET))
import sitecustomize  # noqa: E402,F401  - applies the guard to this process too

DATA_DIR = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data (see its README); tests needing it skip only where the folder is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {DATA_DIR} (set LDFSAM_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed torch's global random generator before every test, so a test's random tensors do not depend on which
    tests ran before it."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.manual_seed(0)
    yield
