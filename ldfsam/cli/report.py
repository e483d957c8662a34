"""``ldfsam report``: (re)build a training run's report.html from its folder."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "report"
HELP = "Rebuild RUN/report.html of an `ldfsam train` run (configuration, curves, evaluation, cases, machine)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder of `ldfsam train`")


def run(args: argparse.Namespace) -> int:
    from ..train.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0
