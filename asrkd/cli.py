"""``asrkd`` command line: one sub-command per module.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, except for
``asrkd -h``, which lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module implementing it
COMMANDS: dict[str, str] = {
    "prepare": "asrkd.data.prepare",
    "synth": "asrkd.data.synth",
    "teacher-adapt": "asrkd.teachers.adapt",
    "cache-teacher": "asrkd.cache",
    "train": "asrkd.train",
    "decode": "asrkd.decode",
    "wer": "asrkd.metrics",
    "export": "asrkd.students.export",
    "report": "asrkd.report",
    "demo": "asrkd.demo",
}


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
        p.set_defaults(_run=mod.run)
    return parser


def _help_line(modname: str) -> str:
    try:
        return importlib.import_module(modname).HELP
    except Exception as err:  # a broken optional module must not break `asrkd -h`
        return f"(unavailable: {err})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
