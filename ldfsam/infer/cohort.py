"""Segmenting many volumes with one model load: :func:`segment_many` (``ldfsam segment INPUT... -o FOLDER``).

Three stages run at once, each on its own thread, so that the model never waits for the disk: a reader reads
and plans the next volume (``read_input`` + ``plan_slices``) while the model predicts the current one, and a
writer cleans up and writes the previous one (``clean_up`` + ``write_outputs``) and records it in the manifest.
SimpleITK, numpy, cc3d and torch release the GIL for their heavy work, so threads overlap for real. At most one
volume waits on each side, which bounds the memory to three volumes' worth.

Under ``torchrun`` (the environment's RANK/WORLD_SIZE/LOCAL_RANK) rank r takes the inputs at positions r, r+N,
r+2N... of the whole expanded list: every rank computes the same list, so no volume is lost or taken twice,
and no rank needs to talk to another: no process group is created, so a rank that dies cannot hang the others
in a collective. Each rank runs on its own GPU (``cuda:LOCAL_RANK``) or, on the CPU, on its share of the cores,
and writes its own manifest file (``ldfsam.infer.manifest``). The output folder must lie apart from the input
folders (``check_apart``). A rank's process supervises the one doing the work (``ldfsam.infer.rank_supervisor``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from ..atomic import check_writable, make_folder
from ..errors import Cancelled, LDFSAMError
from ..progress import Progress
from . import outputs as out_io
from .cohort_inputs import check_apart, check_output_folder, expand_inputs, output_names
from .manifest import ManifestWriter, Record, read_manifest
from .rank_supervisor import WorkerState

PathLike = Union[str, Path]
PHASE = "cohort"


@dataclass(frozen=True)
class Rank:
    """Where this process stands in a ``torchrun`` run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> Rank:
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                   int(env.get("LOCAL_WORLD_SIZE", str(world))))

    def share(self, items: Sequence[Any]) -> List[Any]:
        """This rank's items: positions rank, rank + world_size, ..."""
        return list(items[self.rank::self.world_size])


@dataclass
class CohortSummary:
    """What :func:`segment_many` did (this rank's share under torchrun)."""

    total: int  # volumes named by the inputs (all ranks)
    assigned: int  # of them, this rank's
    done: int  # segmented in this run
    failed: int  # failed in this run (recorded in the manifest with their error)
    skipped: int  # done in an earlier run
    seconds: float
    model_loads: int
    model_s: float  # time the model spent predicting
    model_idle_s: float  # time the model, once loaded, waited for a volume to be read or a result to be written
    manifest: Path
    records: List[Record] = field(default_factory=list)  # this run's, in the order volumes finished
    notes: List[str] = field(default_factory=list)  # renamed outputs

    @property
    def volumes_per_minute(self) -> float:
        return 60.0 * (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0


def _setup_device(device: str, precision: str, rank: Rank, progress: Progress):
    import torch

    from .pipeline import _device_and_precision

    dev, dtype = _device_and_precision(device, precision, progress)
    if dev.type == "cuda" and rank.world_size > 1:
        dev = torch.device("cuda", rank.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    elif dev.type == "cpu" and rank.local_world_size > 1:
        share = max(1, (os.cpu_count() or 1) // rank.local_world_size)
        torch.set_num_threads(max(1, min(torch.get_num_threads(), share)))
    return dev, dtype


def _now_or_later(pool: Optional[ThreadPoolExecutor], fn: Callable, *args) -> Future:
    """``fn(*args)`` on ``pool``'s thread, or here and now without one (overlap off)."""
    if pool is not None:
        return pool.submit(fn, *args)
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed over exactly as a pool would
        future.set_exception(e)
    return future


def segment_many(inputs: Union[PathLike, Sequence[PathLike]], output_dir: PathLike, *, model: Any = None,
                 options=None, device: str = "auto", format: str = "seg.nrrd", force: bool = False,
                 progress: Optional[Progress] = None, overlap: bool = True, rank: Optional[Rank] = None,
                 describe_error: Callable[[BaseException], str] = str) -> CohortSummary:
    """Segment every volume that ``inputs`` name (files, DICOM folders, folders of volumes, ``@list.txt``) into
    ``output_dir``, one output per volume named after it (``format``: ``seg.nrrd`` or ``nii.gz``), the model
    loaded once. Resumable: volumes the folder's manifest records as done (and whose output exists) are skipped,
    failed ones are tried again. A volume that fails is recorded with its error and the run goes on; an
    existing output not recorded as done is a failure unless ``force``. ``options``: a SegmentOptions
    (probabilities are not written). ``rank``: this process's share (default: from torchrun's environment).
    Bad inputs (missing, empty folder, a volume named twice) and an output folder that is a file raise before
    any work. KeyboardInterrupt finishes the write under way (recorded) and leaves no partial file."""
    from .pipeline import SegmentOptions

    options = (options or SegmentOptions()).validate()
    progress = progress or Progress("none")
    rank = rank or Rank.from_env()
    t0 = time.perf_counter()
    folder = check_output_folder(output_dir)
    if rank.world_size > 1:
        check_apart(inputs, folder)
    known = read_manifest(folder) if folder.is_dir() else {}
    volumes = expand_inputs(inputs, exclude=[r.output for r in known.values()])
    names, notes = output_names(volumes, folder, format, {Path(k): Path(r.output) for k, r in known.items()})
    mine = rank.share(volumes)
    finished = {k for k, r in known.items() if r.status == "done" and Path(r.output).exists()}
    worker = WorkerState.from_env()  # under torchrun: the rank's supervisor runs this process
    crashed = worker.skip if worker else set()  # their worker died on them in this run: recorded as failed
    pending = [v for v in mine if str(v.resolve()) not in finished | crashed]
    make_folder(folder)
    check_writable(folder / "manifest.jsonl")
    manifest = ManifestWriter(folder, rank.rank, rank.world_size)
    for note in notes if rank.rank == 0 else ():  # every rank finds the same names: one says so
        progress.log(PHASE, note, level="warning")
    failed_before = sum(str(v.resolve()) in crashed for v in mine)
    summary = CohortSummary(len(volumes), len(mine), 0, failed_before, len(mine) - len(pending) - failed_before,
                            0.0, 0, 0.0, 0.0, manifest.path, notes=notes)
    who = f" (rank {rank.rank} of {rank.world_size}: {len(mine)} of {len(volumes)})" if rank.world_size > 1 else ""
    progress.start(PHASE, total=len(mine), message=f"segmenting {len(mine)} volume(s) into {folder}{who}; "
                   f"{summary.skipped} done before", skipped=summary.skipped, rank=rank.rank,
                   world_size=rank.world_size)
    inner = progress if progress.mode == "json" else Progress("none")  # the bar follows volumes, not slices
    if pending:
        if worker:
            worker.open(folder, rank.rank)
        try:
            _run(pending, names, folder, model, options, device, force, progress, inner, overlap, rank, manifest,
                 summary, describe_error, worker)
        finally:
            if worker:
                worker.close()
    summary.seconds = time.perf_counter() - t0
    progress.done(PHASE, message=summary_line(summary), done=summary.done, failed=summary.failed,
                  skipped=summary.skipped, total=summary.assigned, volumes_per_minute=round(
                      summary.volumes_per_minute, 2), model_loads=summary.model_loads,
                  model_idle_s=round(summary.model_idle_s, 3), manifest=str(summary.manifest),
                  rank=rank.rank if rank.world_size > 1 else None)
    return summary


def summary_line(s: CohortSummary) -> str:
    failed = f", {s.failed} failed (see {s.manifest})" if s.failed else ""
    return (f"{s.done} volume(s) segmented{failed}, {s.skipped} done before, of {s.assigned}; {s.seconds:.1f} s, "
            f"{s.volumes_per_minute:.1f} volumes/minute, model idle {s.model_idle_s:.1f} s")


def _run(pending, names, folder, model, options, device, force, progress, inner, overlap, rank, manifest,
         summary, describe_error, worker: Optional[WorkerState]) -> None:
    from .pipeline import (
        SegmentationResult,
        check_model_file,
        clean_up,
        load_model,
        plan_slices,
        predict,
        read_input,
        write_outputs,
    )

    dev, dtype = _setup_device(device, options.precision, rank, progress)
    model_file = check_model_file(model)
    if model_file is not None:
        from ..checkpoint import read_checkpoint_configs

        pre = read_checkpoint_configs(model_file)[1]
    else:
        pre = model.preprocess

    finishing = threading.Lock()
    tag = rank.rank if rank.world_size > 1 else None  # events of several ranks share one stdout

    def stage(volume: Path, where: Optional[str]) -> None:
        if worker is not None:
            worker.stage(volume, names[volume], where)

    def read(volume: Path):
        t = time.perf_counter()
        stage(volume, "reading")
        out_io.check_outputs({"output": names[volume]}, volume, force)
        plan = plan_slices(read_input(volume, options.spacing), pre, options.slice_spacing, volume.name, volume, inner)
        return plan, time.perf_counter() - t

    def write(volume: Path, plan, prediction, seconds: float, classes: List[str]) -> Record:
        t = time.perf_counter()
        stage(volume, "writing")
        try:
            labels, _, segment_names = clean_up(prediction, plan, classes, options)
            result = SegmentationResult(labels=labels, grid=plan.grid, segment_names=segment_names)
            write_outputs(result, names[volume], None, force)
        except Exception as e:  # noqa: BLE001 - recorded; the run goes on
            return _failed(volume, e, seconds + time.perf_counter() - t)
        return _finished(volume, "done", seconds + time.perf_counter() - t, None)

    def _finished(volume: Path, status: str, seconds: float, error: Optional[str]) -> Record:
        with finishing:  # the main thread (a volume that failed) and the writer thread both finish volumes
            record = manifest.record(volume, names[volume], status, seconds, error)
            stage(volume, None)
            summary.records.append(record)
            if status == "done":
                summary.done += 1
            else:
                summary.failed += 1
                progress.log(PHASE, f"{error}", level="error", input=str(volume), rank=tag)
            progress.update(PHASE, summary.skipped + summary.done + summary.failed, summary.assigned,
                            input=str(volume), output=str(names[volume]), status=status, seconds=round(seconds, 3),
                            error=error, done=summary.done, failed=summary.failed, rank=tag)
        return record

    def _failed(volume: Path, error: BaseException, seconds: float) -> Record:
        if not isinstance(error, LDFSAMError):
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            text = f"internal error: {type(error).__name__}: {error}"
        else:
            text = describe_error(error)
        return _finished(volume, "failed", seconds, text)

    reader = ThreadPoolExecutor(1, thread_name_prefix="ldfsam-read") if overlap else None
    writer = ThreadPoolExecutor(1, thread_name_prefix="ldfsam-write") if overlap else None
    try:
        next_read = _now_or_later(reader, read, pending[0])
        loaded = load_model(model if model_file is None else model_file, encoder_dtype=dtype)
        summary.model_loads += 0 if model_file is None else 1
        classes = list(loaded.model_cfg.class_names)
        last_write: Optional[Future] = None
        for i, volume in enumerate(pending):
            t = time.perf_counter()
            try:
                plan, read_s = next_read.result()
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as e:  # noqa: BLE001 - one bad volume is recorded and the run goes on
                plan, read_s, error = None, 0.0, e
            if i + 1 < len(pending):  # without overlap the read happens here, and the model waits for it
                next_read = _now_or_later(reader, read, pending[i + 1])
            summary.model_idle_s += time.perf_counter() - t
            if plan is None:
                _failed(volume, error, read_s)
                continue
            stage(volume, "predicting")
            inner.log(PHASE, f"segmenting {volume}", input=str(volume), output=str(names[volume]), rank=tag)
            t = time.perf_counter()
            try:
                prediction = predict(loaded, plan, options, dev, dtype, inner)
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as e:  # noqa: BLE001
                _failed(volume, e, read_s + time.perf_counter() - t)
                continue
            plan.release_slices()
            model_s = time.perf_counter() - t
            summary.model_s += model_s
            t = time.perf_counter()
            if last_write is not None:  # one result waiting at most: memory stays bounded
                last_write.result()
            last_write = _now_or_later(writer, write, volume, plan, prediction, read_s + model_s, classes)
            summary.model_idle_s += time.perf_counter() - t
        if last_write is not None:
            last_write.result()
    finally:
        for pool in (reader, writer):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

