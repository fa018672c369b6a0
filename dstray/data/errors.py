"""Input errors of dstray: one exception for a bad input, one record for a found problem.

:class:`DataError` is raised when dstray cannot go on (a missing manifest column, an
unreadable image asked for by a job). :class:`Problem` is what :func:`dstray.data.validate`
collects, so that every bad file of a dataset is listed at once, not one per run.
Both name the file, say what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A bad input: ``path`` (the file or folder), ``problem`` (what is wrong), ``hint`` (what to do)."""

    def __init__(self, path: str | Path, problem: str, hint: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{self.path}: {problem}" + (f"; {hint}" if hint else ""))

    def to_problem(self) -> Problem:
        return Problem(self.path, self.problem + (f"; {self.hint}" if self.hint else ""))


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`dstray.data.validate`: the file and a message (what + what to do)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
