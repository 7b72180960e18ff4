"""Command line: `python -m service {pull,generate,quantize,serve,dummy-model}`.

Each subcommand lives in the module that owns the work; this file only wires them together and turns expected
errors (`service.errors.LLMError`, bad settings) into a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from service.errors import LLMError

# subcommand -> module exposing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "pull": "service.cli.pull",
    "generate": "service.cli.generate",
    "quantize": "service.model.quantize",
    "serve": "service.api.serve",
    "dummy-model": "service.model.dummy",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("service"):
                continue  # a subcommand whose module is not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
