"""The ``ldfsam`` command.

Each sub-command lives in its own module of this package and exposes ``COMMAND`` (its name), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch, ultralytics)
inside ``run`` so that ``ldfsam --help`` and argument errors answer at once. A module may add ``FLAGS``
(Python argument name -> flag) for library arguments whose flag is named otherwise; the others are found from
the parser (``--min-island-mm3`` for ``min_island_mm3``), so that error messages name flags, not arguments.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Dict, List, Optional

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
        p.set_defaults(_run=module.run, _flags={**_flags_of(p), **getattr(module, "FLAGS", {})})
    return parser


def _flags_of(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Argument name -> its long flag, over ``parser`` and its sub-commands."""
    flags: Dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(_flags_of(sub))
        elif action.option_strings and action.dest != "help":
            flags[action.dest] = max(action.option_strings, key=len)
    if "force" in flags:
        flags.setdefault("overwrite", flags["force"])  # the library's overwrite=True is the command's --force
    return flags


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default: this process's own, as the ``ldfsam`` command does; the process then
    exits without a last garbage collection over everything torch made: ``ldfsam.heap.freeze_before_exit``)."""
    code = _main(argv)
    if argv is None:
        from ..heap import freeze_before_exit

        freeze_before_exit()
    return code


def _main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: a command may run itself again
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ..signals import cancel_requested, interrupt_on_sigterm

    try:
        with interrupt_on_sigterm():
            try:
                return int(args._run(args) or 0)
            except Exception as e:
                if not (cancel_requested() or _cancel_reached_a_worker_first(e)):
                    raise
                # The cancel broke what was running (a worker, a library's state) before it could stop it cleanly.
                print(f"ldfsam {args.command}: stopping after a cancel: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                raise KeyboardInterrupt from e
    except LDFSAMError as e:
        from ._progress import error_message

        print(f"ldfsam {args.command}: error: {error_message(e, args)}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the same cancel may still be on its way: exit with 130
        print(f"ldfsam {args.command}: cancelled", file=sys.stderr, flush=True)
        return 130


def _cancel_reached_a_worker_first(error: Exception) -> bool:
    """A Cancel sends SIGTERM to the whole process tree; when a data-loader worker dies of it before this process
    handles its own, torch raises this RuntimeError instead of our KeyboardInterrupt."""
    text = str(error)
    return (isinstance(error, RuntimeError) and "DataLoader worker" in text
            and ("Terminated" in text or "Interrupt" in text))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
