"""The `deepfake-moe` command line: one subcommand per stage, each reading and writing files.

Each stage module registers its subcommands through `register(subparsers)`; the heavy imports
(torch, timm) happen inside the commands, so `--help` stays fast. This is the entry point only:
no library module imports it (errors and exit codes live in `deepfake_moe.errors`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deepfake_moe.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError

COMMAND_MODULES = (
    "deepfake_moe.infer.commands",
    "deepfake_moe.data.commands",
    "deepfake_moe.augment.commands",
    "deepfake_moe.split.commands",
    "deepfake_moe.train.commands",
    "deepfake_moe.evaluate.commands",
    "deepfake_moe.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    from deepfake_moe import __version__

    parser = argparse.ArgumentParser(
        prog="deepfake-moe",
        description="Tell real images from deepfakes with a mixture of experts "
        "(1st place, multi-ffdi 2024 image track).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`predict ... | head`): stop quietly, like other tools
        return _closed_pipe()
    except (UserError, FileNotFoundError) as e:
        print(f"deepfake-moe {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if code is None else int(code)


def _closed_pipe() -> int:
    import os

    # Python flushes stdout once more at exit; point it at /dev/null so that flush cannot fail too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13  # as if killed by SIGPIPE, what `set -o pipefail` expects of a writer cut short


if __name__ == "__main__":
    sys.exit(main())
