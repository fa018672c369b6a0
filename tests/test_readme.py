"""The README runs as written: every `dstray SUBCOMMAND` and `jobs/*.py` it shows exists, with every option.

Checked against the argparse parsers (nothing is run): the commands of the fenced ``bash``
blocks, and the ``dstray ...`` commands of the commands table.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

from dstray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _job_argv(script: str) -> list[str]:
    """The argv a ``jobs/*.py`` entrypoint hands to ``dstray.cli.main`` before its own arguments."""
    path = ROOT / script
    assert path.exists(), f"README runs {script}, which does not exist"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args:
            return [e.value for e in node.args[0].elts if isinstance(e, ast.Constant)]
    raise AssertionError(f"{script} does not call dstray.cli.main([...])")


def _bash_commands(text: str) -> list[str]:
    """Each command line of the fenced bash blocks: continuation lines joined, comments dropped, split at
    ``&&``, ``;`` and ``|``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in re.split(r"&&|;|\|", line) if c.strip()]
    return commands


def _dstray_argv(command: str) -> tuple[str, list[str]] | None:
    """(what it is, the argv ``dstray.cli.main`` gets) of a dstray command or a job; None for other commands."""
    words = shlex.split(command.replace("<", "").replace(">", ""))
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # leading VAR=value assignments
    for i, w in enumerate(words):
        if Path(w).name == "dstray":
            return command, words[i + 1:]
        if re.match(r"^jobs/\w+\.py$", w):
            return command, [*_job_argv(w), *words[i + 1:]]
    return None


def _check(what: str, argv: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    if not argv or argv[0] not in parsers:
        return [f"{what}: unknown subcommand {argv[:1]} (known: {', '.join(parsers)})"]
    known = set(parsers[argv[0]]._option_string_actions)
    return [f"{what}: dstray {argv[0]} has no option {w}" for w in argv[1:]
            if w.startswith("--") and w.split("=", 1)[0] not in known]


def test_the_readme_is_a_short_front_page():
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_every_command_of_the_readme_exists_with_its_options():
    text, parsers = README.read_text(), _subparsers()
    found = [a for a in map(_dstray_argv, _bash_commands(text)) if a is not None]
    # the commands table: `dstray SUBCOMMAND ...` in inline code (optional parts in brackets, a|b choices)
    for cell in re.findall(r"^\| `(dstray [^`]+)`", text, re.M):
        argv = re.sub(r"[\[\]]", " ", cell).split()[1:]
        found.append((cell, [argv[0].split("|")[0], *argv[1:]]))
    assert len(found) >= 15, found  # the parser found the README's commands
    problems = [p for what, argv in found for p in _check(what, argv, parsers)]
    assert not problems, "\n".join(problems)
    shown = {argv[0] for _, argv in found}
    assert set(parsers) <= shown, f"subcommands the README does not show: {set(parsers) - shown}"


def test_the_set_up_commands_are_those_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci
    setup = _bash_commands(text)
    assert ".venv/bin/python -m pytest -q" in setup and ".venv/bin/python jobs/pipeline.py --out runs/demo" in setup


@pytest.mark.parametrize("command, problem", [
    ("dstray fit-dst --data D --stepz 3 --out M", "has no option --stepz"),
    ("dstray fit-dsts --out M", "unknown subcommand"),
    ("python jobs/generate.py --modelz M", "has no option --modelz"),
])
def test_the_check_catches_a_wrong_command(command, problem):
    what, argv = _dstray_argv(command)
    assert any(problem in p for p in _check(what, argv, _subparsers()))
