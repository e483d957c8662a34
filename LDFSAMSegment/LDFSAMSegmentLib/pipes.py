"""Reading a child process's output pipes without threads and without ever blocking (plain Python: no Qt).

Slicer's embedded Python does not enable PythonQt's thread support, so a Python thread reading a pipe runs only
when the main thread happens to release the GIL: output arrives late and progress stutters. Instead the pipes are
made non-blocking and read from the GUI thread by the module's ``qt.QTimer`` (``BackgroundProcess.poll``): each
call takes every byte that is there and returns the complete lines. POSIX: ``os.set_blocking(fd, False)``.
Windows (Python 3.9 in Slicer 5.8 cannot make a pipe non-blocking): ``PeekNamedPipe`` says how many bytes are
waiting and exactly those are read.
"""

from __future__ import annotations

import codecs
import os
import sys
from typing import List, Optional

IS_WINDOWS = sys.platform == "win32"
CHUNK = 65536


class PipeReader:
    """The lines of one pipe, as they arrive: :meth:`read_lines` never waits; ``eof`` once the writer closed it."""

    def __init__(self, stream):
        self.stream = stream  # kept open (and closed by us) so that the file descriptor stays ours
        self.fd = stream.fileno()
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        if not IS_WINDOWS:
            os.set_blocking(self.fd, False)

    def _available(self) -> Optional[int]:
        """Bytes waiting (Windows); None at the end of the pipe."""
        import ctypes
        import msvcrt
        from ctypes import wintypes

        avail = wintypes.DWORD(0)
        handle = msvcrt.get_osfhandle(self.fd)
        ok = ctypes.windll.kernel32.PeekNamedPipe(wintypes.HANDLE(handle), None, 0, None, ctypes.byref(avail), None)
        return int(avail.value) if ok else None  # fails with ERROR_BROKEN_PIPE once the writer is gone

    def _read_bytes(self) -> bytes:
        chunks = []
        while not self.eof:
            if IS_WINDOWS:
                n = self._available()
                if n is None:
                    self.eof = True
                    break
                if n == 0:
                    break
                block = os.read(self.fd, min(n, CHUNK))
            else:
                try:
                    block = os.read(self.fd, CHUNK)
                except BlockingIOError:
                    break
                except OSError:  # the pipe went away under us: nothing more will come
                    block = b""
            if not block:
                self.eof = True
                break
            chunks.append(block)
        return b"".join(chunks)

    def read_lines(self) -> List[str]:
        """The complete lines that arrived since the last call (without their line ends); at the end of the pipe,
        also a last line that had no line end."""
        if self.eof and not self._partial:
            return []
        text = self._partial + self._decoder.decode(self._read_bytes(), final=self.eof)
        lines = text.split("\n")
        self._partial = lines.pop()
        if self.eof:
            if self._partial:
                lines.append(self._partial)
            self._partial = ""
            self.close()
        return [line.rstrip("\r") for line in lines]

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass
