"""The ``fleetpilot`` command line.

Each sub-command lives in its own module under :mod:`fleetpilot.agent.commands` and exposes
``register(subparsers)``; handlers return an exit code. Every :class:`UserError`
(and any parse error) becomes one line on stderr and exit code 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fleetpilot.simulations.errors import UserError

COMMAND_MODULES = (
    "fleetpilot.agent.commands.validate",
    "fleetpilot.agent.commands.simulate",
    "fleetpilot.agent.commands.replay",
    "fleetpilot.agent.commands.forecast",
    "fleetpilot.agent.commands.train",
    "fleetpilot.agent.commands.run",
)


def one_line(text: str, limit: int = 600) -> str:
    """Errors are one line, of bounded length, whatever the user's input contained."""
    flat = " ".join(text.replace("\r", " ").splitlines())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message, where=self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleetpilot", description="Scale and route GenAI inference fleets under a declared goal.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command whose module is not there yet
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fleetpilot: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fleetpilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
