"""``dstray`` command line: one subcommand per job, one module per group.

- :mod:`.data`: ``inspect``;
- :mod:`.dst`: ``fit-dst``, ``stylize``, ``generate`` (the paper's first half);
- :mod:`.seg`: ``train-seg``, ``evaluate``, ``tune`` (the second half);
- :mod:`.run`: ``pipeline``, ``experiment``, ``report``;
- :mod:`.export`: ``export`` (a generated dataset as PNG files);
- :mod:`.args`: config <-> argparse and the flags the groups share.

Commands import the Ray layer only when they run, so ``dstray --help`` and ``dstray inspect``
do not import ray.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import shlex
import sys

from dstray.cli import data, dst, export, run, seg
from dstray.cli.args import apply_layout

# Errors that mean "bad input" (a file, a path, an option); the message says what to do. DataError,
# InputProblems and most of dstray's own input errors are ValueErrors; torch's load errors are wrapped
# in DataError where a file is read (dstray.data.read_checkpoint).
INPUT_ERRORS = (ValueError, OSError, RuntimeError, pickle.UnpicklingError, EOFError)
_INPUT_ERROR_NAMES = ("DataError", "InputProblems", "ValueError", "FileNotFoundError", "NotADirectoryError",
                      "IsADirectoryError", "FileExistsError", "PermissionError", "OSError", "UnpicklingError",
                      "WeightsUnavailableError", "AreaDoesNotFit")
_LAST_ERROR_LINE = re.compile(rf"^(?:[\w.]+\.)?({'|'.join(_INPUT_ERROR_NAMES)}): (.+)$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstray", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data, dst, seg, run, export):
        group.register(sub)
    return p


def input_error(exc: BaseException, model: str | None = None) -> str | None:
    """The message of ``exc`` if it is an input error, looking through Ray's wrappers; None for a bug.

    Ray wraps an error raised in a task or actor (``RayTaskError``, whose ``cause`` is the error),
    a Ray Train worker's (``WorkerGroupError.worker_failures``), or only keeps its traceback as
    text (a Ray Data ``UserCodeException``, an actor that died in its constructor): then the
    last ``SomeError: message`` line of that text is the message. ``model``: the command's
    ``--model`` file, named when torch could not load a checkpoint.
    """
    outer, exc = exc, _unwrap(exc)
    if type(exc).__module__.startswith("ray.") or type(exc).__name__.startswith("Ray"):
        text = f"{outer}\n{exc}"  # the worker's traceback is in the outermost wrapper's text
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()]
        found = [m for m in map(_LAST_ERROR_LINE.match, lines) if m]
        return found[-1].group(2) if found else None
    if model and _torch_load_failed(exc):  # torch's own text may advise weights_only=False: not for an input
        return (f"{model}: corrupt or not a dstray checkpoint ({type(exc).__name__}); write it again with the "
                "command that made it (`dstray train-seg` for a segmenter, `dstray fit-dst` for a DST model)")
    if isinstance(exc, INPUT_ERRORS):
        return str(exc) or type(exc).__name__
    return None


def _torch_load_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.load failing on a file that is not a (safe) checkpoint."""
    text = str(exc)
    return isinstance(exc, (pickle.UnpicklingError, EOFError)) or (
        isinstance(exc, RuntimeError) and any(k in text for k in ("PytorchStreamReader", "Invalid magic number",
                                                                   "weights_only", "invalid load key")))


def _unwrap(exc: BaseException) -> BaseException:
    """The error inside Ray's wrappers (a task's ``cause``, a Train worker's failure); ``exc`` otherwise."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            continue
        failures = getattr(exc, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            exc = next(iter(failures.values()))
            continue
        break
    return exc


def _check_outputs(args: argparse.Namespace) -> None:
    """Output folders given as the path of an existing file: refused before any work."""
    from dstray.storage import require_folder

    for flag in ("out", "storage_path"):
        location = getattr(args, flag, None)
        if isinstance(location, str) and location:
            require_folder(location, "--" + flag.replace("_", "-"))


def interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The one line of a command stopped with Ctrl-C: what it saved (``args.saved()``, set by the command
    once it knows where it writes) and the command that resumes it (the same one)."""
    what = "nothing yet"
    if getattr(args, "saved", None) is not None:
        try:
            what = args.saved()
        except Exception as exc:  # the line must still be printed
            what = f"unknown ({type(exc).__name__}: {exc})"
    return f"dstray {args.command}: interrupted; saved {what}; resume with: dstray {shlex.join(argv)}"


def main(argv: list[str] | None = None) -> int:
    """``dstray ...``: run a subcommand; an input error prints ``dstray CMD: error: MESSAGE`` (exit 2), no traceback.

    Ctrl-C prints one line (:func:`interrupted`) and exits with 130, without a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        _check_outputs(args)
        apply_layout(args)  # --references-per-type / --reference-order ride on --data
        return args.func(args)
    except KeyboardInterrupt:
        if "ray" in sys.modules:  # stop the work first: the line says what was saved once nothing more is
            from dstray.distributed.runtime import stop_quietly

            stop_quietly()
        print(interrupted(args, argv), file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        message = input_error(exc, model=getattr(args, "model", None))
        if message is None:  # not an input problem: a bug, shown in full
            raise
        if args.verbose:
            logging.getLogger("dstray").debug("the error in full", exc_info=True)
        print(f"dstray {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
