"""`trilm tokenizer`: train a tokenizer on files or a dataset and write a folder AutoTokenizer loads.

    trilm tokenizer --config recipes/configs/tokenizer_bpe_8k.yaml --output_dir runs/tok

Prints the vocabulary size, tokens per word on held-out text, and the time taken; writes them to
`report.json` beside the tokenizer."""

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from trilm.tokenization import FAMILIES, KINDS, train_tokenizer
from trilm.tokenization.tokenization_trilm import _capped, read_texts

from .common.args import parse_args
from .common.data import file_builder


@dataclass
class TokenizerArguments:
    output_dir: str = field(default="runs/tokenizer", metadata={"help": "where the tokenizer folder is written"})
    files: list[str] = field(default_factory=list, metadata={"help": "text files to train on"})
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets name or local folder/file to train on"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    dataset_split: str = field(default="train", metadata={"help": "the dataset split"})
    text_column: str = field(default="text", metadata={"help": "the dataset column holding text"})
    kind: str = field(default="bpe", metadata={"help": f"one of {', '.join(KINDS)}"})
    family: str = field(default="decoder", metadata={"help": f"one of {', '.join(FAMILIES)}"})
    vocab_size: int = field(default=32000, metadata={"help": "vocabulary size, special tokens included"})
    min_frequency: int = field(default=2, metadata={"help": "minimum count of a merge (bpe, wordpiece)"})
    max_chars: int | None = field(default=None, metadata={"help": "read at most this many characters"})
    lowercase: bool = field(default=False, metadata={"help": "lowercase (wordpiece)"})
    strip_accents: bool | None = field(default=None, metadata={"help": "strip accents (wordpiece; default: with lowercase)"})
    num_sentinels: int = field(default=100, metadata={"help": "<extra_id_N> sentinel tokens (seq2seq)"})
    model_max_length: int | None = field(default=None, metadata={"help": "the tokenizer's model_max_length"})
    heldout_fraction: float = field(default=0.01, metadata={"help": "share of lines held out to measure tokens per word"})
    benchmark: bool = field(default=False, metadata={"help": "also time batch encoding of the corpus (see benchmark())"})
    benchmark_rounds: int = field(default=5, metadata={"help": "interleaved timing rounds for --benchmark"})


def run(args: TokenizerArguments) -> dict:
    if not 0 < args.heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction={args.heldout_fraction} is invalid: it must lie in (0, 0.5).")
    if bool(args.files) == bool(args.dataset_name):
        raise ValueError("Give exactly one source: --files FILE [FILE ...] or --dataset_name NAME_OR_PATH.")
    start = time.perf_counter()
    lines = [line for line in _capped(_read_source(args), args.max_chars) if line.strip()]
    every = round(1 / args.heldout_fraction)
    heldout = lines[::every]
    train = [line for i, line in enumerate(lines) if i % every]
    tokenizer = train_tokenizer(
        texts=train,
        kind=args.kind,
        vocab_size=args.vocab_size,
        family=args.family,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        strip_accents=args.strip_accents,
        num_sentinels=args.num_sentinels,
        model_max_length=args.model_max_length,
    )
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in tokenizer.encode_corpus(heldout, add_special_tokens=False))
    words = sum(len(line.split()) for line in heldout)
    tokenizer.save_pretrained(args.output_dir)
    report = {
        "vocab_size": len(tokenizer),
        "tokens_per_word": round(tokens / max(words, 1), 4),
        "heldout_lines": len(heldout),
        "train_lines": len(train),
        "seconds": round(seconds, 2),
        "arguments": asdict(args),
    }
    if args.benchmark:
        report["encode_throughput"] = benchmark(tokenizer, train, args.benchmark_rounds)
    (Path(args.output_dir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"vocab size {report['vocab_size']} | tokens per word (held-out) {report['tokens_per_word']} | "
        f"trained in {report['seconds']} s | saved to {args.output_dir}"
    )
    return report


def benchmark(tokenizer, texts: list[str], rounds: int = 5, batch_size: int = 1000) -> dict:
    """Batch-encoding throughput (characters/s, median over rounds run interleaved) of: the raw `tokenizers`
    backend (`encode_batch`), transformers' stock `PreTrainedTokenizerFast` wrapping the same backend, our
    class called the same way, and our bulk path `encode_corpus`. Prints a table and returns the figures."""
    stock = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(tokenizer.backend_tokenizer))
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    chars = sum(len(t) for t in texts)
    contenders = {
        "raw backend encode_batch": lambda b: tokenizer.backend_tokenizer.encode_batch(b),
        "stock PreTrainedTokenizerFast": lambda b: stock(b),
        "TrilmTokenizer __call__": lambda b: tokenizer(b),
        "TrilmTokenizer.encode_corpus": lambda b: tokenizer.encode_corpus(b),
    }
    seconds = {name: [] for name in contenders}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, encode in contenders.items():
            start = time.perf_counter()
            for batch in batches:
                encode(batch)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times[1:]) for name, times in seconds.items()}
    raw = medians["raw backend encode_batch"]
    result = {name: {"chars_per_s": round(chars / t), "vs_raw": round(raw / t, 3)} for name, t in medians.items()}
    print(f"{'batch encoding (' + str(len(texts)) + ' lines)':40} {'chars/s':>12} {'vs raw':>8}")
    for name, row in result.items():
        print(f"{name:40} {row['chars_per_s']:>12,} {row['vs_raw']:>8.2f}")
    return result


def _read_source(args: TokenizerArguments):
    if args.files:
        return read_texts(files=args.files)
    return read_texts(texts=_dataset(args), text_column=args.text_column)


def _dataset(args: TokenizerArguments):
    from datasets import load_dataset, load_from_disk

    path = Path(args.dataset_name)
    if path.is_dir() and (path / "dataset_info.json").exists():
        return load_from_disk(str(path))
    if path.is_file():
        builder, options = file_builder(str(path), keep_linebreaks=False)
        return load_dataset(builder, data_files=str(path), split=args.dataset_split, **options)
    return load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split)


def main(argv: list[str]) -> int:
    (args,) = parse_args((TokenizerArguments,), argv, prog="trilm tokenizer")
    run(args)
    return 0
