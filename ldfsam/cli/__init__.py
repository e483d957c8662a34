"""The ``ldfsam`` command.

Each sub-command lives in its own module of this package and exposes ``COMMAND`` (its name), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch, ultralytics)
inside ``run`` so that ``ldfsam --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from .. import __version__
from ..errors import LDFSAMError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            yield module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldfsam",
        description="LDFSAM: tooth segmentation in dental CBCT with localization-distilled feature prompts.",
    )
    parser.add_argument("--version", action="version", version=f"ldfsam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ..signals import interrupt_on_sigterm

    try:
        with interrupt_on_sigterm():
            return int(args._run(args) or 0)
    except LDFSAMError as e:
        print(f"ldfsam {args.command}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"ldfsam {args.command}: cancelled", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
