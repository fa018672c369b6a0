"""The pipeline's terminal: a few lines of its own; Ray's output into a log file of the run folder.

While a :class:`Console` is open, file descriptors 1 and 2 of this process point to ``log``
(appended), so everything that would otherwise fill the terminal lands there: the Ray worker
logs that ``ray.init(log_to_driver=True)`` forwards to the driver, Ray Train's and Ray Data's
progress and warnings, dstray's own log lines, Python warnings, and whatever a C++ library
writes to stderr. :meth:`Console.say` writes to the terminal the process had when the console
opened (and copies each line to ``log`` and to ``lines``). The descriptors are restored on exit,
also after an error, so the CLI's error message reaches the terminal.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class Console:
    """``with Console(log_path, lines_path) as c: c.say("...")``; see the module docstring."""

    def __init__(self, log: str | Path, lines: str | Path | None = None):
        self.log, self.lines = Path(log), Path(lines) if lines is not None else None
        self._saved: list[int] = []
        self._term = None
        self._log_file = None

    def __enter__(self) -> Console:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.lines is not None:
            self.lines.write_text("")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._term = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._log_file = open(self.log, "a", buffering=1, encoding="utf-8")
        self._log_file.write(f"\n===== dstray pipeline, {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        self._log_file.flush()
        os.dup2(self._log_file.fileno(), 1)
        os.dup2(self._log_file.fileno(), 2)
        return self

    def say(self, line: str = "") -> None:
        """One line on the terminal (and in the log and the lines file)."""
        self._term.write(line + "\n")
        self._term.flush()
        for stream in (sys.stdout, sys.stderr):  # keep the log in order
            stream.flush()
        self._log_file.write(f"[dstray] {line}\n")
        if self.lines is not None:
            with open(self.lines, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def __exit__(self, *exc) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._term.close()
        self._log_file.close()
