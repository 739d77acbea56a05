"""The `trilm` command line: `trilm <command> --config FILE.yaml [--key value ...]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import version



def _tokenizer(argv: list[str]) -> int:
    from .tokenizer import main

    return main(argv)


def _bench(argv: list[str]) -> int:
    from .bench import main

    return main(argv)


# command name -> (one-line help, entry point taking the remaining argv); imports stay lazy so that
# `trilm --help` is quick.
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "tokenizer": ("train a tokenizer on files or a dataset", _tokenizer),
    "bench": ("time training and generation, optionally against transformers' reference", _bench),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="trilm", description="Train and run trilm models.")
    parser.add_argument("--version", action="version", version=f"trilm {version('trilm')}")
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[0]}" for k, v in sorted(COMMANDS.items())))
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])
        return 0
    args, rest = parser.parse_args(argv[:1]), argv[1:]
    return COMMANDS[args.command][1](rest)


if __name__ == "__main__":
    sys.exit(main())
