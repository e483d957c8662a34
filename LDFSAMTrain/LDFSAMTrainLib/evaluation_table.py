"""The per-case evaluation table: the CSV that ``ldfsam evaluate`` writes, read for display, and shown in the
panel's table widget (:func:`fill_table`, which takes any QTableWidget: Slicer's or PySide6's)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional


@dataclass
class EvaluationTable:
    columns: List[str]
    rows: List[List[str]]

    def column(self, name: str) -> List[Optional[float]]:
        """A numeric column (None where a cell is empty or not a number)."""
        index = self.columns.index(name)
        values = []
        for row in self.rows:
            try:
                value = float(row[index])
                values.append(value if math.isfinite(value) else None)
            except (ValueError, IndexError):
                values.append(None)
        return values

    def means(self) -> Dict[str, float]:
        """Mean of every numeric column over the cases that have a value."""
        out = {}
        for name in self.columns:
            values = [v for v in self.column(name) if v is not None]
            if values and len(values) == sum(1 for r in self.rows if r[self.columns.index(name)].strip()):
                out[name] = sum(values) / len(values)
        return out


def read_evaluation_csv(path: str | Path) -> EvaluationTable:
    """Read the evaluation CSV; ValueError naming the file when it is empty or ragged."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise ValueError(f"{path}: empty evaluation table")
    columns, body = rows[0], [r for r in rows[1:] if any(cell.strip() for cell in r)]
    for number, row in enumerate(body, 2):
        if len(row) != len(columns):
            raise ValueError(f"{path}: line {number} has {len(row)} fields, the header {len(columns)}")
    return EvaluationTable(columns, body)


def fill_table(table, data: EvaluationTable, make_item: Callable[[str], object]) -> None:
    """Show ``data`` in a QTableWidget, one row per case; ``make_item(text)`` makes a cell (``QTableWidgetItem``).

    Sorting is off while the cells are set and back on afterwards: with it on, Qt re-sorts the rows after each
    ``setItem`` and the cells of one case end up in different rows (Qt documents to enable sorting only after
    populating the table). A table that the user had sorted is shown in the file's order again.
    """
    sorting = table.isSortingEnabled()
    table.setSortingEnabled(False)
    table.clear()
    table.setRowCount(0)
    table.setColumnCount(len(data.columns))
    table.setHorizontalHeaderLabels(data.columns)
    table.setRowCount(len(data.rows))
    for r, row in enumerate(data.rows):
        for c, value in enumerate(row):
            table.setItem(r, c, make_item(value))
    header = table.horizontalHeader()
    header.setSortIndicator(-1, header.sortIndicatorOrder())  # no column sorted yet: the file's order
    table.setSortingEnabled(sorting)
