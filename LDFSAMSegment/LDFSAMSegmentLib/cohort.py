"""Segmenting many volumes from the Segment module: the command line, and what to show from its events.

The module runs ``ldfsam segment INPUT... -o FOLDER --progress json`` as one background process (the model is
loaded once; a rerun into the same folder resumes). Volumes of the scene are first saved to files and named in a
list file (:func:`write_list_file`), so that no command line grows past the system's limit. Every event of the
process goes to :meth:`CohortState.feed`; the widget copies ``percent``, ``status`` and ``volumes`` into its
widgets and, when the process has ended, loads :meth:`CohortState.outputs` and shows :meth:`CohortState.message`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .commands import device_arg, ldfsam_argv

FORMATS = ("seg.nrrd", "nii.gz")


def write_list_file(paths: Sequence[str], target: str) -> str:
    """Write ``paths`` one per line into ``target`` (atomically) and return the ``@target`` argument."""
    if not paths:
        raise ValueError("no volumes to segment")
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".list.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{os.path.abspath(p)}\n" for p in paths))
    os.replace(tmp, target)
    return f"@{target}"


SOURCES = ("Scene volumes", "Folder")  # the "Many volumes" section's choices (parameter node values)
SCALAR_VOLUME = "vtkMRMLScalarVolumeNode"


def single_component_scalar_volumes(nodes: Sequence[Any]) -> List[Any]:
    """The volume nodes a tooth model can segment: plain scalar volumes with image data of one component.

    ``slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")`` also returns its subclasses: label maps, vector
    (RGB) volumes, diffusion-weighted and tensor volumes. Those are left out by their class name; a scalar volume
    of several components (a colour image read as scalar) by its image data.
    """
    kept = []
    for node in nodes:
        image = node.GetImageData()
        if node.GetClassName() == SCALAR_VOLUME and image is not None and image.GetNumberOfScalarComponents() == 1:
            kept.append(node)
    return kept


def volume_file_names(names: Sequence[str]) -> List[str]:
    """One ``NAME.nrrd`` per scene volume, safe as a file name and unique (the outputs are named after them, so
    two volumes called alike get ``NAME-2.nrrd``...)."""
    out: List[str] = []
    taken: set = set()
    for name in names:
        stem = re.sub(r"[^\w.-]+", "_", str(name)).strip("._") or "volume"
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        out.append(f"{candidate}.nrrd")
    return out


def check_output_folder(path: Optional[str]) -> str:
    """The output folder as an absolute path; ValueError when none is chosen or it names a file."""
    if not path or not str(path).strip() or str(path).strip() == ".":
        raise ValueError("choose an output folder for the segmentations")
    folder = os.path.abspath(str(path).strip())
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder}: the output folder is a file")
    return folder


def check_input_folder(path: Optional[str]) -> str:
    """The folder of volumes to segment as an absolute path; ValueError when none is chosen or it is missing."""
    if not path or not str(path).strip() or str(path).strip() == ".":
        raise ValueError("choose the folder of volumes to segment")
    folder = os.path.abspath(str(path).strip())
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    return folder


def segment_many_argv(inputs: Sequence[str], output_folder: str, model: str, device: str = "auto",
                      threshold: float = 0.5, min_island_mm3: float = 10.0, split_teeth: bool = False,
                      batch: Optional[int] = None, slice_spacing: str = "auto", fmt: str = "seg.nrrd",
                      force: bool = False, python: Optional[str] = None) -> List[str]:
    """``ldfsam segment INPUT... -o FOLDER --format FMT`` with JSON events. ``inputs``: volume files, DICOM
    folders, folders of volumes ("segment all volumes in a folder") or ``@list`` arguments."""
    if not inputs:
        raise ValueError("no volumes to segment")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose one of {', '.join(FORMATS)})")
    args: List[object] = ["segment", *inputs, "-o", output_folder, "--format", fmt, "--model", model, "--device",
                          device_arg(device), "--threshold", f"{threshold:g}", "--min-island-mm3",
                          f"{min_island_mm3:g}", "--slice-spacing", slice_spacing, "--progress", "json"]
    if split_teeth:
        args.append("--split-teeth")
    if batch:
        args += ["--batch", batch]
    if force:
        args.append("--force")
    return ldfsam_argv(*args, python=python)


@dataclass
class VolumeStatus:
    """One volume of the run: ``status`` is running (the model on it), writing (its result being written),
    done or failed."""

    input: str
    output: Optional[str] = None
    status: str = "running"
    seconds: Optional[float] = None
    error: Optional[str] = None


@dataclass
class CohortState:
    total: int = 0  # volumes of the run (over every rank)
    skipped: int = 0  # done by an earlier run into the same folder
    percent: int = 0
    status: str = ""
    volumes: Dict[str, VolumeStatus] = field(default_factory=dict)  # in the order they started
    summary: Optional[str] = None  # the core's closing line
    error: Optional[str] = None  # the run itself failed (bad input): nothing was segmented
    _slice_fraction: float = 0.0  # of the volume being segmented (one process)
    _ranks: Dict[str, Any] = field(default_factory=dict)  # which rank segments a volume (None: one process)

    @property
    def finished(self) -> int:
        return self.skipped + sum(v.status in ("done", "failed") for v in self.volumes.values())

    def feed(self, event: Dict[str, Any]) -> None:
        """Update from one event of the process (``ldfsam.progress.parse_event``)."""
        kind, phase = event.get("kind"), event.get("phase")
        if phase == "cohort" and kind == "start":
            self.total += int(event.get("total") or 0)
            self.skipped += int(event.get("skipped") or 0)
        elif phase == "cohort" and kind == "log" and event.get("input"):
            name = str(event["input"])
            for volume in self.volumes.values():  # the model moved on: the previous volume is being written
                if volume.status == "running" and event.get("rank") == self._ranks.get(volume.input):
                    volume.status = "writing"
            self.volumes[name] = VolumeStatus(name, event.get("output"))
            self._ranks[name] = event.get("rank")
            self._slice_fraction = 0.0
        elif phase == "cohort" and kind == "progress" and event.get("input"):
            name = str(event["input"])
            volume = self.volumes.setdefault(name, VolumeStatus(name))
            volume.output, volume.status = event.get("output"), str(event.get("status"))
            volume.seconds, volume.error = event.get("seconds"), event.get("error")
            self._slice_fraction = 0.0
        elif phase == "segment" and kind == "progress" and event.get("fraction") is not None:
            self._slice_fraction = float(event["fraction"])
        elif phase == "cohort" and kind == "done":
            self.summary = event.get("message")
        elif kind == "error":
            self.error = str(event.get("message") or "failed")
        self._update_status()

    def _update_status(self) -> None:
        if self.error:
            self.status = f"Error: {self.error}"
            return
        if not self.total:
            return
        running = [v for v in self.volumes.values() if v.status == "running"]
        share = self._slice_fraction if len(running) == 1 else 0.0
        past_model = self.finished + sum(v.status == "writing" for v in self.volumes.values())
        self.percent = max(0, min(100, int(100 * (past_model + share) / self.total)))
        failed = sum(v.status == "failed" for v in self.volumes.values())
        text = f"{self.finished} of {self.total} volume(s)" + (f", {failed} failed" if failed else "")
        if running:
            text += f"; segmenting {', '.join(Path(v.input).name for v in running)}"
        self.status = text

    def outputs(self) -> List[str]:
        """The files this run wrote, to load into the scene."""
        return [v.output for v in self.volumes.values() if v.status == "done" and v.output]

    def done(self) -> List[VolumeStatus]:
        """The volumes this run segmented and wrote (input and output), in the order they started."""
        return [v for v in self.volumes.values() if v.status == "done" and v.output]

    def failures(self) -> List[VolumeStatus]:
        return [v for v in self.volumes.values() if v.status == "failed"]

    def message(self, returncode: Optional[int]) -> Optional[str]:
        """None when every volume was segmented; else what to tell the user. Exit status 1: some volumes failed
        (each listed with its error, the others written); 2: nothing was done (bad input)."""
        if returncode == 0:
            return None
        if returncode == 1 and self.failures():
            lines = [f"{len(self.failures())} of {self.total} volume(s) could not be segmented (the others were; "
                     "running again into the same folder retries these):"]
            return "\n".join(lines + [f"- {v.error}" for v in self.failures()])
        if returncode == 130:
            return "Cancelled. Running again into the same folder segments only what is not done."
        return f"Failed (exit status {returncode}): {self.error}" if self.error else f"Failed (exit {returncode})."
