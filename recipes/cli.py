"""The `trilm` command line: `trilm <command> --config FILE.yaml [--key value ...]`."""

from __future__ import annotations

import argparse
import importlib
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


if __name__ == "__main__":
    sys.exit(main())
