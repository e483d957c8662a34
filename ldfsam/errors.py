"""The project's exception types.

Every error a user can cause (a bad file, a bad option) is an :class:`LDFSAMError` whose message names the
file and the problem; the command line prints it without a traceback and exits with status 2.

A message about an argument names it as the caller gave it: ``threshold=1.5`` to a Python caller, ``--threshold
1.5`` on the command line. The message holds ``{}`` where each :class:`Arg` goes, and the command line renders
it with its own flags (:meth:`LDFSAMError.for_command_line`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

_NO_VALUE = object()


@dataclass(frozen=True)
class Arg:
    """A Python argument named in a message: ``name=value``, or just ``name`` when no value is given."""

    name: str
    value: Any = _NO_VALUE

    def python(self) -> str:
        return self.name if self.value is _NO_VALUE else f"{self.name}={self.value!r}"

    def flag(self, flag: str) -> str:
        """As the command line says it: ``--flag``, or ``--flag value``."""
        if self.value is _NO_VALUE or self.value is True:
            return flag
        return f"{flag} {self.value}"


class LDFSAMError(Exception):
    """A problem with the user's input, reported as a message rather than a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None, *, arguments: Sequence[Arg] = ()):
        self.path = None if path is None else Path(path)
        self.message, self.arguments = message, tuple(arguments)
        super().__init__(self._render([a.python() for a in self.arguments]))

    def _render(self, names: Sequence[str]) -> str:
        text = self.message
        if self.arguments:  # "{}" marks each argument; any other braces are the message's own text
            parts = text.split("{}", len(names))
            text = "".join(p + n for p, n in zip(parts, names)) + "".join(parts[len(names):])
        return f"{self.path}: {text}" if self.path is not None else text

    def for_command_line(self, flags: Mapping[str, str]) -> str:
        """The message with each argument named by its flag (``flags``: argument name -> flag), where it has
        one."""
        return self._render([a.flag(flags[a.name]) if a.name in flags else a.python() for a in self.arguments])


class InputError(LDFSAMError):
    """An input file is missing, unreadable or not what the operation needs."""


class OutputError(LDFSAMError):
    """An output cannot be written there: an input's own file, a folder that cannot be written, or a file that
    exists already (and overwriting it was not asked for)."""


class CheckpointError(LDFSAMError):
    """A model file is foreign, truncated, corrupt or of another architecture."""


class ConfigError(LDFSAMError):
    """A configuration value is out of range or of the wrong type."""


class Cancelled(LDFSAMError):
    """The operation was stopped by the user (SIGINT/SIGTERM or Cancel); nothing partial was left behind."""

    exit_code = 130


def exists_already(path: Union[str, Path], argument: str = "overwrite", appeared: bool = False) -> OutputError:
    """The error for an output file that is there already; ``argument`` is the caller's way to overwrite it."""
    what = "appeared while writing" if appeared else "exists already"
    return OutputError(f"{what}; pass {{}} to overwrite it", path, arguments=[Arg(argument, True)])


def itk_message(e: Exception) -> str:
    """The part of an ITK (SimpleITK) exception's message worth showing a user."""
    text = str(e).strip().splitlines()
    # ITK messages start with a file:line banner; the last non-empty line is the useful part.
    lines = [t.strip() for t in text if t.strip()]
    return lines[-1] if lines else type(e).__name__
