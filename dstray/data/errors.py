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


class InputProblems(ValueError):
    """A job refused to start: the :class:`Problem` list that stops it (from :func:`dstray.data.validate`)."""

    def __init__(self, job: str, root: str | Path, problems: list[Problem]):
        self.job, self.root, self.problems = job, Path(root), list(problems)
        n = len(self.problems)
        lines = [f"{n} input problem{'s' if n != 1 else ''} in {self.root} stop{'s' if n == 1 else ''} {job} "
                 f"(nothing was started; `dstray inspect {self.root}` shows the whole report):"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))
