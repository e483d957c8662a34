"""First-use dependency installation of the Slicer modules: what is missing, and a pip command that never replaces
the packages Slicer ships (checked with the real pip, offline, on wheels made here)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LDFSAMSegment"))

from LDFSAMSegmentLib import dependencies, requirements_file  # noqa: E402


def versions(**installed):
    return lambda name: installed.get(name.lower().replace("-", "_"))


def test_nothing_to_install_in_a_complete_environment():
    # This test environment has everything the core needs (setup.sh installs it).
    requirements = dependencies.read_requirements(requirements_file())
    assert dependencies.unmet(requirements) == []
    assert dependencies.plan(requirements).empty


def test_plan_splits_torch_from_pip_and_keeps_slicer_packages():
    requirements = ["torch>=2.1", "torchvision>=0.16", "ultralytics==8.4.190", "numpy>=1.23", "SimpleITK>=2.2",
                    "tqdm>=4.64", "pillow>=9"]
    # Like a fresh Slicer: numpy and SimpleITK shipped (numpy too old for us), no torch, an old tqdm.
    plan = dependencies.plan(requirements, versions(numpy="1.22.0", simpleitk="2.3.1", tqdm="4.10.0"))
    assert plan.torch == ["torch>=2.1", "torchvision>=0.16"]
    assert plan.pip == ["ultralytics==8.4.190", "tqdm>=4.64", "pillow>=9"]
    assert plan.conflicts == ["numpy>=1.23 (Slicer ships numpy 1.22.0, which is kept)"]
    text = plan.message()
    assert "via the PyTorch extension: torch>=2.1 (BSD-3-Clause), torchvision>=0.16 (BSD-3-Clause)" in text
    assert "via pip: ultralytics==8.4.190 (AGPL-3.0), tqdm>=4.64 (MPL-2.0 and MIT), pillow>=9 (MIT-CMU)" in text
    assert "ultralytics (the YOLOv8 detector" in text and "GNU AGPL-3.0" in text
    assert "AGPL" not in dependencies.plan(["tqdm>=4.64"], versions()).message()
    assert dependencies.torch_version_requirement(plan.torch) == ">=2.1"
    assert dependencies.torch_version_requirement(["torch"]) is None


def test_requirement_markers_and_prereleases():
    assert dependencies.unmet(['pywin32>=300; sys_platform == "win32"'] if sys.platform != "win32" else [],
                              versions()) == []
    assert dependencies.unmet(["torch>=2.1"], versions(torch="2.14.1+cu128")) == []
    assert dependencies.unmet(["torch>=2.1"], versions(torch="2.0.1")) == ["torch>=2.1"]


def test_bad_requirements_file_names_the_line(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nnumpy>=1\n\nnot a requirement!!\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"requirements.txt:4: invalid requirement"):
        dependencies.read_requirements(path)


def test_constraints_pin_the_installed_slicer_packages_and_torch():
    text = dependencies.constraints()
    from importlib.metadata import version

    from packaging.version import Version

    for name in ("numpy", "scipy", "SimpleITK", "requests", "torch", "torchvision"):
        assert f"{name}=={Version(version(name)).public}\n" in text
    assert dependencies.constraints(versions(numpy="1.26.4"), ["numpy", "SimpleITK"]) == "numpy==1.26.4\n"
    # The PyTorch extension's builds carry a local label; the pin holds them without naming it.
    shipped = versions(numpy="1.26.4", scipy="1.13.1", torch="2.2.2+cpu", torchvision="0.17.2+cpu")
    assert dependencies.constraints(shipped) == ("numpy==1.26.4\nscipy==1.13.1\ntorch==2.2.2\n"
                                                 "torchvision==0.17.2\n")


def test_every_requirement_has_its_licence_shown():
    for line in dependencies.read_requirements(requirements_file()):
        assert dependencies.license_of(line) != "licence unknown", line
    assert dependencies.license_of("ultralytics==8.4.190") == "AGPL-3.0"
    assert dependencies.license_of("PyYAML>=6") == "MIT"


def test_restart_is_offered_only_when_an_updated_package_was_loaded_before_the_install():
    assert dependencies.needs_restart(["pillow>=9"], {"PIL": object()})
    assert dependencies.needs_restart(["scikit-image"], {"skimage": object()})
    assert not dependencies.needs_restart(["ultralytics==8.4.190"], {"numpy": object()})
    # An installer that imports what it installed (SlicerPyTorch's installTorch imports torch): the modules loaded
    # before the install decide, not those loaded after it.
    sys.modules.pop("colorsys", None)
    before = dependencies.loaded_modules()
    import colorsys  # noqa: F401  - the "installer" importing the package it installed

    assert dependencies.needs_restart(["colorsys"], sys.modules)
    assert not dependencies.needs_restart(["colorsys"], before)


def _wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    """A minimal, valid pure-Python wheel (no files but its metadata)."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + \
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}/METADATA", meta)
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


def test_real_pip_honours_the_constraints_and_keeps_the_shipped_version(tmp_path):
    # A "shipped" package in two versions, and a package we need that would pull the newer one.
    for v in ("1.0", "2.0"):
        _wheel(tmp_path, "shippedpkg", v)
    _wheel(tmp_path, "neededpkg", "1.0", requires=["shippedpkg>=1"])
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(dependencies.constraints(versions(shippedpkg="1.0"), ["shippedpkg"]), encoding="utf-8")
    args = dependencies.pip_install_args(["neededpkg"], constraints)
    assert args == ["--disable-pip-version-check", "--constraint", str(constraints), "neededpkg"]

    def dry_run(pip_args):
        # What slicer.util.pip_install runs: python -m pip install ARGS (here offline, on the wheels made above).
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(tmp_path),
               "--ignore-installed", *pip_args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    pinned = dry_run(args)
    assert pinned.returncode == 0, pinned.stderr
    assert "Would install neededpkg-1.0 shippedpkg-1.0" in pinned.stdout
    free = dry_run(["neededpkg"])
    assert "shippedpkg-2.0" in free.stdout  # without the constraints pip would have replaced it
    # A requirement that needs a newer shipped package fails instead of replacing it.
    _wheel(tmp_path, "greedypkg", "1.0", requires=["shippedpkg>=2"])
    refused = dry_run(dependencies.pip_install_args(["greedypkg"], constraints))
    assert refused.returncode != 0 and "shippedpkg" in refused.stdout + refused.stderr


def test_a_failing_install_raises_with_pips_own_explanation(tmp_path):
    # What the install logic shows in its error dialog: pip's message, not a traceback out of a button's slot.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("", encoding="utf-8")
    argv = dependencies.pip_install_argv(["nosuchpkg-ldfsam==1.0"], constraints, python=sys.executable,
                                         extra=["--no-index", "--find-links", str(tmp_path), "--target",
                                                str(tmp_path / "site")])
    assert argv[:4] == [sys.executable, "-m", "pip", "install"]
    idle = []
    with pytest.raises(dependencies.InstallError, match=r"^pip install failed \(exit status 1\)$") as error:
        dependencies.run_install(argv, idle=lambda: idle.append(1), poll_s=0.02)
    assert "No matching distribution found for nosuchpkg-ldfsam==1.0" in error.value.details
    assert error.value.details.startswith("$ " + " ".join(argv))
    assert idle  # the GUI was given the chance to repaint while pip ran


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_an_install_that_succeeds_installs_what_it_was_given(tmp_path):
    _wheel(tmp_path, "neededpkg", "1.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("", encoding="utf-8")
    argv = dependencies.pip_install_argv(["neededpkg"], constraints, python=sys.executable,
                                         extra=["--no-index", "--find-links", str(tmp_path), "--target",
                                                str(tmp_path / "site")])
    lines = dependencies.run_install(argv, poll_s=0.02)
    assert any("Successfully installed neededpkg-1.0" in line for line in lines), lines
    assert (tmp_path / "site" / "neededpkg-1.0.dist-info" / "METADATA").is_file()
