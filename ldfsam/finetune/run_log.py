"""The run folder's logs: ``log.csv`` (one row per epoch) and TensorBoard events under ``tensorboard/``.

On resume, rows and events written after the restored step are dropped, so the logs read as one clean run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, Optional

from ..atomic import write_text_atomic

COLUMNS = ("epoch", "global_step", "train_loss", "val_dice", "val_loss", "lr", "seconds", "skipped_steps")


class RunLog:
    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.csv_path = Path(run_dir) / "log.csv"
        self.rows = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, encoding="utf-8", newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["global_step"]) <= resume_step]
        self._write_csv()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but logging must not stop training
                self.tb = None

    def _write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.csv_path, buf.getvalue())

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def epoch(self, row: Dict[str, Any]) -> None:
        self.rows.append({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        self._write_csv()
        step = int(row["global_step"])
        for key in ("train_loss", "val_dice", "val_loss", "lr"):
            if row.get(key) is not None:
                self.scalar(f"epoch/{key}", float(row[key]), step)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
