"""The ``lis`` command line.

Each sub-command lives with the code it drives and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires
them up and imports each lazily, so ``lis invoke`` never loads TVM or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vocabulary.errors import LisError

__all__ = ["main"]

# sub-command -> (module, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("serve_app.cli.up", "start or join Ray and deploy the services"),
    "validate": ("serve_app.cli.validate", "check configuration files and report every problem"),
    "reload": ("serve_app.cli.reload", "replace a service's replicas one at a time (new model)"),
    "status": ("serve_app.cli.status", "show the services of a running lis"),
    "invoke": ("serve_app.cli.invoke", "send one image to a service and print the result"),
    "pipeline": ("serve_app.cli.pipeline", "run a camera, stream, folder or image through a "
                                          "service and print the results"),
    "compile": ("modelkit.compile", "compile an MXNet model into a DLR artifact (local Neo)"),
    "models": ("modelkit.demo", "build or list the demo models"),
    "node": ("cluster.node", "start a Ray head or join a worker for this device"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lis", description="Local Inference Service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in _COMMANDS:
        parser.parse_args(argv)  # prints usage / the unknown-command error
        return 2
    module_name, help_text = _COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"lis {argv[0]}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except LisError as error:
        print(f"lis {argv[0]}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
