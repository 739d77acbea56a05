"""The `trilm` command line: `trilm <command> --config FILE.yaml [--key value ...]`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import version



def _lazy(module: str) -> Callable[[list[str]], int]:
    """The `main(argv)` of a recipe module, imported only when its command runs, so `trilm --help` is quick."""

    def entry(argv: list[str]) -> int:
        return importlib.import_module(f"trilm.recipes.{module}").main(argv)

    return entry


# command name -> (one-line help, entry point taking the remaining argv)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "quickstart": ("tokenizer + a tiny model of each family on the built-in corpus, saved, reloaded, sampled", _lazy("quickstart")),
    "corpus": ("write the built-in corpus to files", _lazy("corpus")),
    "tokenizer": ("train a tokenizer on files or a dataset", _lazy("tokenizer")),
    "pretrain": ("masked-LM / causal-LM / span-corruption pretraining on Trainer", _lazy("pretrain")),
    "finetune": ("task fine-tuning with PEFT/LoRA: classification, tagging, extractive QA, SFT, seq2seq", _lazy("finetune")),
    "reward": ("a reward model on preference pairs (TRL RewardTrainer)", _lazy("reward")),
    "rlhf": ("online RL from rewards: GRPO or RLOO (TRL), PPO-style clipping and KL", _lazy("rlhf")),
    "dpo": ("direct preference optimisation (TRL DPOTrainer)", _lazy("dpo")),
    "generate": ("sample, chat, translate or fill masks with a checkpoint", _lazy("generate")),
    "push": ("upload a run folder (model, tokenizer, card) to the Hub", _lazy("push")),
    "export": ("a checkpoint as transformers' own Llama/BERT/BART class, or as GGUF (llama.cpp, Ollama)", _lazy("export")),
    "bench": ("time training and generation, optionally against transformers' reference", _lazy("bench")),
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


def console_main() -> int:
    """The `trilm` console script: `main`, with the input errors the recipes raise on purpose (`ValueError`, a
    missing file) printed as one line, `trilm <command>: error: ...`, exit status 2, as argparse reports its
    own; `--debug` (or TRILM_DEBUG=1) shows their traceback. Unexpected exceptions keep theirs."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("TRILM_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as error:
        if debug:
            raise
        command = argv[0] if argv and not argv[0].startswith("-") else ""
        message = " ".join(str(error).split())  # one line, also where a message spans several
        print(f"trilm {command}: error: {message} (--debug shows the traceback)".replace("trilm : ", "trilm: "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console_main())
