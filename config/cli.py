"""The one entry helper every script's main block calls, `run_script(Args, main)`: ``--help``, logging, parsing, and
one clear line instead of a traceback for an expected error (``--debug`` keeps the traceback), with its exit codes.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import re
import sys
import textwrap
import tokenize
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, NoReturn

from common.logs import setup_logging
from config.fields import Config, allowed_text, cli_text, type_name
from config.program import program_name, script_module_name
from config.tensorflow_log import DEBUG_ENV, debug_requested, quiet_tensorflow

# Errors a user can cause or meet (bad value, missing file, full disk, NaN loss, Ctrl-C, a missing optional package,
# a dead worker process): one line, no traceback. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError, KeyboardInterrupt,
                                                    ImportError, MemoryError, BrokenProcessPool)
EXIT_ERROR = 1  # an expected error while running
EXIT_BAD_ARGS = 2  # a bad --key=value (the usual exit status of a command-line usage error)


def run_script(args_class: type[Config], main: Callable[[Any], Any], argv: list[str] | None = None) -> NoReturn:
    """Every script's ``__main__`` block: ``--help``, logging, Args from the command line, then `main(args)`.

    Exits 0 (or main's return value when it is an int), 1 after an expected error (`EXPECTED_ERRORS`, logged as one
    line), 2 for a bad --key=value. ``--debug`` or INSIGHTFACE_TF_DEBUG=1 lets the error's traceback through and
    keeps TensorFlow's own start-up log.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # worker processes (align's) debug too
    quiet_tensorflow(argv)
    argv = [item for item in argv if item != "--debug"]
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(help_text(args_class, main) + "\n")
        sys.exit(0)
    setup_logging()
    try:
        args = args_class.from_cli(argv)
    except ValueError as err:
        if debug:
            raise
        _script_logger().error("%s (--help lists every key)", _one_line(err))
        sys.exit(EXIT_BAD_ARGS)
    try:
        result = main(args)
    except _expected_errors() as err:
        if debug:
            raise
        _script_logger().error("%s (--debug shows the traceback)", _one_line(err) or type(err).__name__)
        sys.exit(EXIT_ERROR)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """EXPECTED_ERRORS, and TensorFlow's out-of-memory error when TensorFlow is loaded (never imported for this)."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return EXPECTED_ERRORS + ((errors.ResourceExhaustedError,) if errors is not None else ())


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {text}" if text and not isinstance(err, ValueError) else text


def help_text(args_class: type[Config], main: Callable[[Any], Any] | None = None) -> str:
    """The ``--help`` page: the script's run line and docstring summary, then every field's type, default and its
    comment in `class Args`."""
    module = sys.modules.get(main.__module__) if main is not None else None
    summary = (inspect.getdoc(module) or "").split("\n\n")[0] if module is not None else ""
    comments = _field_comments(args_class)
    fields = args_class.fields()
    rows = [(f"--{key}", type_name(tp), cli_text(getattr(args_class, key)), _help_what(comments.get(key, ""), tp))
            for key, tp in fields.items()]
    headers = ("key", "type", "default")
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(3)]
    lines = [f"usage: {program_name()} [--key=value ...] [--debug] [--help]", ""]
    if summary:
        lines += [summary, ""]
    lines += ["Args (edit `class Args` in the script, or override a field with --key=value; lists as [a,b] or a,b):",
              "  " + "  ".join(name.ljust(width) for name, width in zip(headers, widths))
              + "  what"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
              for row in rows]
    lines += ["", "  --debug  full tracebacks and TensorFlow's own start-up log (also INSIGHTFACE_TF_DEBUG=1)",
              "  --help   this page"]
    return "\n".join(line.rstrip() for line in lines)


def _help_what(comment: str, tp: Any) -> str:
    """A field's comment, then what its rules allow (last: a long list of choices only widens its own line)."""
    allowed = allowed_text(tp)
    return f"{comment} [allowed: {allowed}]" if allowed else comment


def _script_logger() -> logging.Logger:
    """The logger named after the running script ("train_nets", "nets", "data.synthetic")."""
    return logging.getLogger(script_module_name())


def _field_comments(args_class: type[Config]) -> dict[str, str]:
    """Field name -> its comment in the source of `args_class` (or of the base class defining it): the full-line
    comments right above the field, then the one beside it. Section banners (``# --- data ---``) are left out."""
    comments: dict[str, str] = {}
    for klass in reversed(args_class.__mro__):
        if klass in (Config, object) or "__annotations__" not in vars(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined where there is no source (an interactive session)
            continue
        lines = source.splitlines()
        by_line = {token.start[0]: token.string.lstrip("#").strip()
                   for token in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__)
                   if token.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above = node.lineno
            while above - 1 in by_line and lines[above - 2].lstrip().startswith("#") and not _BANNER.match(
                    by_line[above - 1]):
                above -= 1
            comments[node.target.id] = " ".join(by_line[n] for n in range(above, node.end_lineno + 1) if n in by_line)
    return comments


_BANNER = re.compile(r"^-{2,}.*-{2,}$")
