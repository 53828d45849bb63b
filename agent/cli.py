"""The ``fleetpilot`` command line.

Each sub-command lives in its own module under :mod:`fleetpilot.agent.commands` and exposes
``register(subparsers)``; handlers return an exit code. Every :class:`UserError`
(and any parse error) becomes one line on stderr and exit code 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from fleetpilot.simulations.errors import UserError

COMMAND_MODULES = (
    "fleetpilot.agent.commands.validate",
    "fleetpilot.agent.commands.examples",
    "fleetpilot.agent.commands.simulate",
    "fleetpilot.agent.commands.replay",
    "fleetpilot.agent.commands.forecast",
    "fleetpilot.agent.commands.train",
    "fleetpilot.agent.commands.run",
    "fleetpilot.agent.commands.trace_import",
    "fleetpilot.agent.commands.shadow_report",
    "fleetpilot.agent.commands.handover",
    "fleetpilot.agent.commands.calibrate",
    "fleetpilot.agent.commands.tune",
    "fleetpilot.agent.commands.rbac",
)


def one_line(text: str, limit: int = 600) -> str:
    """Errors are one line, of bounded length, whatever the user's input contained."""
    flat = " ".join(text.replace("\r", " ").splitlines())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # main() prints "fleetpilot: error: ..."; name only the sub-command here, not the program again
        sub = self.prog.removeprefix("fleetpilot").strip()
        raise UserError(message, where=sub or None)


def version_text() -> str:
    """``fleetpilot --version``: the version, the Python, and which optional extras are installed."""
    import platform

    from fleetpilot import __version__
    from fleetpilot.simulations.resources import EXTRAS, missing_extra

    extras = ", ".join(f"{name} {'installed' if not missing_extra(name) else 'not installed'}" for name in EXTRAS)
    return f"fleetpilot {__version__} (Python {platform.python_version()}; extras: {extras})"


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, without re-wrapping the line to the terminal width."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleetpilot", description="Scale and route GenAI inference fleets under a declared goal.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and the installed extras, then exit")
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
        from fleetpilot.agent.argcheck import check_args

        check_args(args)  # impossible flag values and unusable outputs: refused before any work
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fleetpilot: error: {one_line(_redact(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fleetpilot: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("fleetpilot: error: out of memory (an input larger than this machine can hold?)", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not bad input: one line unless FLEETPILOT_DEBUG=1 asks for the traceback
        extra = _extra_of(exc.name) if isinstance(exc, ModuleNotFoundError) else None
        if extra is not None:  # an optional extra's module, imported lazily deep inside a command
            print(f"fleetpilot: error: this needs the optional dependencies fleetpilot[{extra}] (missing: "
                  f"{exc.name}); install them with: pip install 'fleetpilot[{extra}]'", file=sys.stderr)
            return 2
        if os.environ.get("FLEETPILOT_DEBUG") == "1":
            raise
        print(f"fleetpilot: internal error: {type(exc).__name__}: {one_line(_redact(str(exc)), 300)} "
              "(set FLEETPILOT_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 1


def _extra_of(module: str | None) -> str | None:
    """The optional extra (``rl``, ``prophet``) that provides ``module``, if one does."""
    from fleetpilot.simulations.resources import EXTRAS

    top = (module or "").split(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def _redact(text: str) -> str:
    """Secrets (URL userinfo, tokens, passwords registered by agent.prom) never reach stderr."""
    try:
        from fleetpilot.agent.prom import redact
    except Exception:  # noqa: BLE001 -- an error message must still print if the import itself is what failed
        return text
    return redact(text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
