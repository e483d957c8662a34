"""The project's exception types.

Every error a user can cause (a bad file, a bad option) is an :class:`LDFSAMError` whose message names the
file and the problem; the command line prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class LDFSAMError(Exception):
    """A problem with the user's input, reported as a message rather than a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class InputError(LDFSAMError):
    """An input file is missing, unreadable or not what the operation needs."""


class CheckpointError(LDFSAMError):
    """A model file is foreign, truncated, corrupt or of another architecture."""


class ConfigError(LDFSAMError):
    """A configuration value is out of range or of the wrong type."""


class Cancelled(LDFSAMError):
    """The operation was stopped by the user (SIGINT/SIGTERM or Cancel); nothing partial was left behind."""

    exit_code = 130
