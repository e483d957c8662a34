"""Training curves as table columns: one row per epoch of a phase, loss and validation Dice side by side.

The Train module copies these columns into a table node that a plot chart shows (x: epoch; the phases follow
each other on one axis: Phase 2 epochs continue after the last Phase 1 epoch).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

from LDFSAMSegmentLib.run_state import CurvePoint

COLUMNS = ("step", "phase", "epoch", "loss", "val_dice")


def curve_columns(points: Sequence[CurvePoint]) -> Dict[str, List]:
    """Columns for the curve table; NaN where an epoch has no loss or no validation Dice yet."""
    columns: Dict[str, List] = {name: [] for name in COLUMNS}
    offset, last_phase, last_epoch = 0.0, None, 0.0
    for point in points:
        if last_phase is not None and point.phase != last_phase:
            offset += last_epoch
        last_phase, last_epoch = point.phase, point.epoch
        columns["step"].append(offset + point.epoch)
        columns["phase"].append(point.phase)
        columns["epoch"].append(point.epoch)
        columns["loss"].append(math.nan if point.loss is None else point.loss)
        columns["val_dice"].append(math.nan if point.val_dice is None else point.val_dice)
    return columns
