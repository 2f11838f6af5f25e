"""asrkd: distil a large pretrained acoustic teacher into a small streaming CTC student.

The ``asrkd`` command line: one thin module per sub-command in this package, each defining
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` over one library
function. Modules are imported only when their command runs, except for ``asrkd -h``, which
lists them all.

An error that escapes a command is printed as one ``error: ...`` line (exit code 1; usage
errors exit 2); ``--debug`` or ``ASRKD_DEBUG=1`` shows the traceback instead. Commands that
read checkpoints take ``--trust-checkpoint`` (see :mod:`asrkd.models.checkpoint`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command name -> module implementing it
COMMANDS: dict[str, str] = {
    "prepare": "asrkd.cli.prepare",
    "synth": "asrkd.cli.synth",
    "teacher-adapt": "asrkd.cli.teacher_adapt",
    "cache-teacher": "asrkd.cli.cache_teacher",
    "train": "asrkd.cli.train",
    "decode": "asrkd.cli.decode",
    "transcribe": "asrkd.cli.transcribe",
    "pseudo-label": "asrkd.cli.pseudo_label",
    "wer": "asrkd.cli.wer",
    "export": "asrkd.cli.export",
    "report": "asrkd.cli.report",
    "demo": "asrkd.cli.demo",
}
# commands that open .pt files a user may hand them
READS_CHECKPOINTS = {"teacher-adapt", "cache-teacher", "train", "decode", "export", "report", "pseudo-label"}


def _available() -> dict[str, str]:
    import importlib.util

    def exists(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # its parent package is absent
            return False

    return {name: mod for name, mod in COMMANDS.items() if exists(mod)}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, modname in _available().items():
        if only is not None and name != only:
            # A cheap placeholder so `asrkd -h` still lists the command.
            sub.add_parser(name, help=_help_line(modname), add_help=False)
            continue
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        _add_common_arguments(p, name)
        p.set_defaults(_run=mod.run)
    return parser


def _help_line(modname: str) -> str:
    try:
        return importlib.import_module(modname).HELP
    except Exception as err:  # a broken optional module must not break `asrkd -h`
        return f"(unavailable: {err})"


def _add_common_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback (also: ASRKD_DEBUG=1)")
    if name in READS_CHECKPOINTS:
        p.add_argument(
            "--trust-checkpoint",
            action="store_true",
            help="fully unpickle .pt files that hold more than tensors and plain data (this runs any "
            "code they contain: only for files you made yourself)",
        )


def describe_error(err: BaseException) -> str:
    """One readable line (or a few, for messages that carry a summary table) for an error."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        msg = err.strerror if not where or str(where) in err.strerror else f"{where}: {err.strerror}"
        return msg
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = f"missing key {text}"
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # key=value overrides after an option (argparse stops at it)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from asrkd.models.checkpoint import trusted_checkpoints

    try:
        with trusted_checkpoints(getattr(args, "trust_checkpoint", False)):
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or os.environ.get("ASRKD_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1
