"""The progress reporter of a command, and its error event when the command fails."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from ..progress import Progress


def error_message(error: BaseException, args) -> str:
    """What the command line says about ``error``: an LDFSAMError with the command's flags for the arguments it
    names; anything else (a bug) by its type, the traceback going to stderr."""
    from ..errors import LDFSAMError

    if isinstance(error, LDFSAMError):
        return error.for_command_line(getattr(args, "_flags", {}))
    return f"internal error: {type(error).__name__}: {error}"


@contextlib.contextmanager
def command_progress(args, phase: str) -> Iterator[Progress]:
    """``args.progress``'s reporter for the length of the command. With ``json`` the events own stdout (what
    libraries print goes to stderr meanwhile), and a failure ends the stream with an error event naming its
    cause (in the phase that was running), unless the code that failed reported one itself. A cancel (Ctrl-C,
    SIGTERM) is not a failure."""
    progress = Progress(args.progress)
    json_mode = args.progress == "json"
    saved = sys.stdout
    if json_mode:
        progress.stream = saved
        sys.stdout = sys.stderr
    try:
        yield progress
    except Exception as e:
        if json_mode and not progress.reported_error:
            progress.error(progress.phase or phase, error_message(e, args))
        raise
    finally:
        progress.close()
        sys.stdout = saved
