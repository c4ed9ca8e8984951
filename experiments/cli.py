"""The `shardtwin` command. Each experiments/cmd_*.py module registers its subcommands.

Rules: a user never sees a traceback. ShardtwinError -> one line on stderr and its
exit code (2 bad input, 1 failed); argparse errors -> one line and exit 2;
Ctrl-C -> exit 130 after the command's own cleanup ran (finally blocks).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import NoReturn, Sequence

from shardtwin.errors import ShardtwinError

# Modules that add subcommands; each has register(subparsers) -> None.
COMMAND_MODULES = (
    "experiments.cmd_models",
    "experiments.cmd_scenario",
    "experiments.cmd_db",
    "experiments.cmd_sim",
    "experiments.cmd_real",
    "experiments.cmd_demo",
    "experiments.cmd_validate",
    "experiments.cmd_analyze",
    "experiments.cmd_test",
    "experiments.cmd_distributed",
    "experiments.cmd_soak",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="shardtwin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class Terminated(SystemExit):
    """SIGTERM: unwinds like Ctrl-C so every finally block (browsers, the store) runs.
    A SystemExit, because asyncio re-raises only SystemExit/KeyboardInterrupt from callbacks."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        rc = args.func(args)
    except ShardtwinError as exc:
        sys.stderr.write(f"shardtwin: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("shardtwin: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write("shardtwin: terminated\n")
        return 143
    except BrokenPipeError:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(rc or 0)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
