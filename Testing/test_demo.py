"""``ldfsam demo`` on a fresh machine: the bundled model segments the bundled phantom and reports Dice."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import slicerio

from ldfsam.models import load_registry

REPO = Path(__file__).resolve().parents[1]


def test_bundled_files_match_the_registry_and_the_size_budget():
    registry = load_registry()
    entries = [e for e in registry.values() if e.bundled]
    assert {"ldfsam-demo", "litemedsam-half-neck"} <= {e.name for e in entries}
    for entry in entries:
        path = entry.bundled_path
        assert path.stat().st_size == entry.size, entry.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256, entry.name
    demo = registry["ldfsam-demo"].bundled_path.parent
    # the demo model, its phantom and the half-resolution encoder's neck: 20 MB at most together
    total = sum(p.stat().st_size for p in demo.iterdir() if p.is_file()) + \
        sum(e.bundled_path.stat().st_size for e in entries if e.bundled_path.parent != demo)
    assert total <= 20 * 2**20, f"bundled files take {total / 2**20:.1f} MB"


@pytest.mark.slow  # the README command end to end: about 40 s on 2 cores; CI runs it (-m slow)
def test_demo_command(tmp_path):
    out = tmp_path / "demo.seg.nrrd"
    r = subprocess.run([sys.executable, "-m", "ldfsam", "demo", "-o", str(out), "--progress", "none"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Dice against the phantom's truth: ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) >= 0.85, r.stdout
    assert "not a clinical model" in r.stdout
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Tooth"]
