"""The manifest of a cohort run: one JSON line per volume in the output folder, what makes a run resumable.

Each line: ``input``, ``output`` (absolute paths), ``status`` (``done`` or ``failed``), ``seconds``, ``error``
(the message of a failure, else null), ``finished`` (Unix time) and ``rank``.

One writer per file, so no two processes ever write one file: a single process writes ``manifest.jsonl``,
rank ``r`` of a ``torchrun`` run ``manifest.rank{r}.jsonl``. A writer rewrites its whole file atomically (a
temporary file, fsync, rename) each time a volume finishes, so the file is always complete and never torn, even
when the process is killed. Readers merge every manifest file of the folder; the latest record of an input wins.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import write_text_atomic

MAIN = "manifest.jsonl"
PATTERN = "manifest*.jsonl"


@dataclass
class Record:
    input: str
    output: str
    status: str  # "done" or "failed"
    seconds: float
    error: Optional[str] = None
    finished: float = 0.0
    rank: int = 0


def manifest_name(rank: int, world_size: int) -> str:
    return MAIN if world_size <= 1 else f"manifest.rank{rank}.jsonl"


def _read_file(path: Path) -> List[Record]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            records.append(Record(**{k: data.get(k) for k in Record.__dataclass_fields__ if k in data}))
        except (json.JSONDecodeError, TypeError):
            continue  # not a record: a line added by hand, say
    return records


def read_manifest(folder: Path) -> Dict[str, Record]:
    """Resolved input path -> its latest record, over every manifest file in ``folder``."""
    latest: Dict[str, Record] = {}
    for path in sorted(Path(folder).glob(PATTERN)):
        for record in _read_file(path):
            old = latest.get(record.input)
            if old is None or (record.finished or 0) >= (old.finished or 0):
                latest[record.input] = record
    return latest


class ManifestWriter:
    """This process's manifest file: :meth:`record` adds (or replaces) a volume's line and rewrites the file
    atomically. Thread-safe (volumes finish in a background writer thread)."""

    def __init__(self, folder: Path, rank: int = 0, world_size: int = 1):
        self.path = Path(folder) / manifest_name(rank, world_size)
        self.rank = rank
        self._lock = threading.Lock()
        self._records: Dict[str, Record] = {}
        if self.path.is_file():
            self._records = {r.input: r for r in _read_file(self.path)}

    def record(self, input: Path, output: Path, status: str, seconds: float, error: Optional[str] = None) -> Record:
        rec = Record(str(Path(input).resolve()), str(Path(output).absolute()), status, round(seconds, 3), error,
                     round(time.time(), 3), self.rank)
        with self._lock:
            self._records[rec.input] = rec
            text = "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in self._records.values())
            write_text_atomic(self.path, text)
        return rec
