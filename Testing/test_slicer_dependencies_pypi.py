"""The first-use pip command against the real PyPI, for the Python and packages of Slicer 5.8.1 and 5.10.0.

The module's own plan and constraints (``dependencies``) for a Slicer whose PyTorch extension installed an older
torch: pip resolves every requirement (``--dry-run``, wheels only, for that Python) without replacing torch,
torchvision or the packages Slicer ships. The versions Slicer ships are those of its SuperBuild
(``SuperBuild/External_python-numpy.cmake``, ``External_python-scipy.cmake`` at the release tags).

pip runs in a real interpreter of Slicer's Python version (3.9, 3.12), as Slicer runs it: pip's
``--python-version`` does not apply to the environment markers of dependencies (ultralytics needs a package only
on Python >= 3.11), so a resolution for 3.9 from another Python is not the one Slicer would get. A version without
an interpreter on this machine is skipped, saying so.

This test needs pypi.org (the only test of the suite that does): it is slow, and skipped when PyPI cannot be
reached. Its pip runs without the suite's network guard and without this machine's pip configuration.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LDFSAMSegment"))

from LDFSAMSegmentLib import dependencies, requirements_file  # noqa: E402

# What each Slicer ships (its SuperBuild pins) plus a torch the PyTorch extension may have installed there, older
# than what the newest monai and torchvision want.
SLICERS = {
    "5.8.1": ("3.9", {"numpy": "1.26.4", "scipy": "1.13.1", "SimpleITK": "2.4.0", "requests": "2.32.3",
                      "torch": "2.2.2+cpu", "torchvision": "0.17.2+cpu"}),
    "5.10.0": ("3.12", {"numpy": "2.0.2", "scipy": "1.13.1", "SimpleITK": "2.4.1", "requests": "2.32.3",
                        "torch": "2.4.1+cpu", "torchvision": "0.19.1+cpu"}),
}


def _interpreter(version: str) -> Optional[str]:
    """A Python of that version (``python3.9`` on the PATH, or under pyenv), checked by running it."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def _online_env() -> dict:
    """This environment without the suite's network guard and without any pip configuration of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "LDFSAM_TEST_NO_NETWORK"}
    nonet = str(Path(__file__).resolve().parent / "_nonet")
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != nonet)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@pytest.fixture(scope="module")
def online_env() -> dict:
    env = _online_env()
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('pypi.org', 443), 10)"],
                           env=env, capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("pypi.org cannot be reached from this machine (this test resolves against the real index)")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("slicer", sorted(SLICERS))
def test_pip_resolves_the_core_without_replacing_torch_or_slicers_packages(slicer, online_env, tmp_path):
    python_version, shipped = SLICERS[slicer]
    python = _interpreter(python_version)
    if python is None:
        pytest.skip(f"no Python {python_version} on this machine to resolve for Slicer {slicer} as Slicer would")

    def version_of(name):
        return shipped.get(name)

    plan = dependencies.plan(dependencies.read_requirements(requirements_file()), version_of,
                             environment={"python_version": python_version, "python_full_version": python_version})
    assert plan.torch == [] and plan.pip, plan  # torch is there; the rest is pip's
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(dependencies.constraints(version_of), encoding="utf-8")
    assert "torch==" + shipped["torch"].split("+")[0] in constraints.read_text()
    report = tmp_path / "report.json"
    extra = ["--dry-run", "--ignore-installed", "--only-binary=:all:", "--index-url", "https://pypi.org/simple",
             "--report", str(report), "--quiet"]
    argv = dependencies.pip_install_argv(plan.pip, constraints, python=python, extra=extra)
    run = subprocess.run(argv, env=online_env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    installs = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    # --ignore-installed: pip lists what it would take even where Slicer has it already:
    # each must be the version Slicer (or its PyTorch extension) has, never another one.
    for name, version in shipped.items():
        if name.lower() in installs:
            assert installs[name.lower()] == version.split("+")[0], (name, installs[name.lower()])
    assert "monai" in installs and "ultralytics" in installs
