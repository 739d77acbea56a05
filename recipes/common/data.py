"""The data layer every recipe shares: where the rows come from (a Hub dataset or local folder, files, or
the built-in corpus), the validation split, column checks, and tokenization into packed blocks.

Argument names are those of transformers' example scripts (`run_clm`, `run_mlm`, `run_translation`).
Everything that can be wrong with the data is checked here, before a model is built or a step is taken.
"""

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .builtin import load_builtin

# File suffix (after any .gz) -> the `datasets` builder that reads it.
BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
# Token-per-line files of tagged sentences (CoNLL-2003, UNER's .iob2, CoNLL-U), read by `read_conll`.
TAGGED_SUFFIXES = (".conll", ".conllu", ".iob", ".iob2", ".bio")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "a Hub dataset name, or a local dataset folder"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_file: str | None = field(default=None, metadata={"help": f"training data: {', '.join(BUILDERS)} (gzipped too)"})
    validation_file: str | None = field(default=None, metadata={"help": "validation data, same formats"})
    test_file: str | None = field(default=None, metadata={"help": "test data, same formats"})
    text_column_name: str | None = field(default=None, metadata={"help": "the column holding text (default: text)"})
    label_column_name: str | None = field(default=None, metadata={"help": "the column holding labels"})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "percent of the training rows held out (the last ones) when no validation split exists"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use at most this many training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use at most this many validation rows"})
    streaming: bool = field(default=False, metadata={"help": "stream the data instead of loading it (for large corpora)"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenization"})
    block_size: int | None = field(default=None, metadata={"help": "tokens per training sequence (default: the model's maximum, at most 1024)"})
    keep_linebreaks: bool = field(default=True, metadata={"help": "keep line breaks when reading .txt files"})
    train_target_file: str | None = field(
        default=None, metadata={"help": "seq2seq: target lines aligned with the lines of train_file (both read as plain lines)"}
    )
    validation_target_file: str | None = field(default=None, metadata={"help": "seq2seq: target lines aligned with validation_file"})
    corpus_seed: int = field(default=0, metadata={"help": "seed of the built-in corpus, used when no data is given"})
    conll_word_column: int | None = field(
        default=None, metadata={"help": "CoNLL-style files: the column holding the word (default 1 when lines start with an index, else 0)"}
    )
    conll_tag_column: int | None = field(
        default=None, metadata={"help": "CoNLL-style files: the column holding the tag (default 2 when lines start with an index, else the last)"}
    )

    def __post_init__(self):
        line_aligned = self.train_target_file is not None  # any suffix (train.en, train.de.gz): read as lines
        if self.validation_target_file and not self.validation_file:
            raise ValueError("validation_target_file is aligned with validation_file: give both.")
        if line_aligned and self.validation_file and not self.validation_target_file:
            raise ValueError("validation_file with train_target_file needs validation_target_file, the aligned target lines.")
        for name in ("train_file", "validation_file", "test_file", "train_target_file", "validation_target_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}={path} not found: no such file.")
            if path is not None and not line_aligned and _suffix(path) not in (*BUILDERS, *TAGGED_SUFFIXES):
                raise ValueError(
                    f"{name}={path} has an unknown format; use one of {', '.join((*BUILDERS, *TAGGED_SUFFIXES))} (optionally .gz)."
                )
            if path is not None and _is_blank(path):
                raise ValueError(f"{name}={path} is empty: it holds no rows.")
        if self.dataset_name and self.train_file:
            raise ValueError("Give dataset_name or train_file, not both.")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(f"validation_split_percentage={self.validation_split_percentage} must lie in [0, 100).")


    def description(self) -> str:
        """Where the rows come from, for the model card."""
        return self.train_file or self.dataset_name or f"the trilm built-in corpus (seed {self.corpus_seed})"


def _is_blank(path: str) -> bool:
    """Whether a (possibly gzipped) file holds nothing but white space, judged from its first 64 KiB."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return not f.read(1 << 16).strip()


def _suffix(path: str) -> str:
    suffixes = Path(path).suffixes
    return suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else Path(path).suffix


def file_builder(path: str, keep_linebreaks: bool = True) -> tuple[str, dict]:
    """The `datasets` builder that reads a data file, and its options: `load_dataset(builder, data_files=..., **options)`."""
    builder = BUILDERS.get(_suffix(path), "text")
    options = {"keep_linebreaks": keep_linebreaks} if builder == "text" else {}
    if _suffix(path) == ".tsv":
        options["delimiter"] = "\t"
    return builder, options


def load_raw_datasets(args: DataArguments, builtin_kind: str = "text"):
    """Train and validation rows (a `DatasetDict`, or an `IterableDatasetDict` when streaming) from
    `dataset_name`, from files, or else from the built-in corpus's `builtin_kind`. Raises a `ValueError`
    for an empty training set."""
    from datasets import Dataset, DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

    if args.dataset_name:
        path = Path(args.dataset_name)
        if path.is_dir() and (path / "dataset_dict.json").exists():
            raw = load_from_disk(str(path))
        else:
            raw = load_dataset(args.dataset_name, args.dataset_config_name, streaming=args.streaming)
    elif args.train_file:
        files = {"train": args.train_file}
        files.update({split: getattr(args, f"{split}_file") for split in ("validation", "test") if getattr(args, f"{split}_file")})
        if _suffix(args.train_file) in TAGGED_SUFFIXES or is_squad_json(args.train_file):
            raw = DatasetDict({split: Dataset.from_list(read_rows(path, args)) for split, path in files.items()})
        else:
            builder, options = file_builder(args.train_file, args.keep_linebreaks)
            raw = load_dataset(builder, data_files=files, streaming=args.streaming, **options)
    else:
        raw = load_builtin(builtin_kind, args.corpus_seed)
        if args.streaming:
            raw = IterableDatasetDict({split: rows.to_iterable_dataset() for split, rows in raw.items()})
    return finish_splits(raw, args)


def finish_splits(raw, args: DataArguments):
    """`raw` with a validation split (cut from the training rows when it has none), checked not to be empty,
    and cut to max_train_samples / max_eval_samples."""
    from datasets import DatasetDict

    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split; its splits are {list(raw)}.")
    raw = _with_validation(raw, args)
    if not _has_rows(raw["train"]):
        raise ValueError("The training data is empty: it holds no rows. Check train_file / dataset_name.")
    limited = {"train": args.max_train_samples, "validation": args.max_eval_samples}
    for split, limit in limited.items():
        if limit is not None and split in raw:
            raw[split] = raw[split].take(limit) if args.streaming else raw[split].select(range(min(limit, len(raw[split]))))
    return raw if args.streaming else DatasetDict(raw)


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def is_squad_json(path: str) -> bool:
    """Whether a .json file is SQuAD's published layout ({"data": [{"paragraphs": [...]}]}), judged from its start."""
    if _suffix(path) != ".json":
        return False
    with _open_text(path) as f:
        head = f.read(1 << 16)
    return head.lstrip().startswith("{") and '"paragraphs"' in head


def read_lines(path: str) -> list[str]:
    """The lines of a (possibly gzipped) text file, without their line breaks."""
    with _open_text(path) as f:
        return f.read().splitlines()


def read_rows(path: str, args: DataArguments) -> list[dict]:
    """The rows of a file `datasets` has no builder for: CoNLL-style tagged sentences or SQuAD's JSON."""
    return read_conll(path, args.conll_word_column, args.conll_tag_column) if _suffix(path) in TAGGED_SUFFIXES else read_squad(path)


def read_conll(path: str, word_column: int | None = None, tag_column: int | None = None) -> list[dict]:
    """Sentences of a token-per-line file as {"tokens": [...], "tags": [...]} rows: columns split by tabs (or
    white space), a blank line between sentences, `#` comment lines and CoNLL-2003's -DOCSTART- lines skipped,
    CoNLL-U's multi-word ranges (1-2) and empty nodes (1.1) skipped. When lines start with an index (UNER,
    CoNLL-U) the word is column 1 and the tag column 2; otherwise (CoNLL-2003) the word is column 0 and the
    tag the last column. `word_column` / `tag_column` choose others."""
    rows, tokens, tags = [], [], []
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("#") or line.startswith("-DOCSTART-"):
                continue
            if not line.strip():
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            indexed = fields[0].isdigit() or bool(re.fullmatch(r"\d+[-.]\d+", fields[0]))
            if indexed and not fields[0].isdigit():
                continue
            word = word_column if word_column is not None else (1 if indexed else 0)
            tag = tag_column if tag_column is not None else (2 if indexed else -1)
            if max(word, tag) >= len(fields):
                raise ValueError(f"{path}, line {number}: {len(fields)} columns, but the word is read from column {word} "
                                 f"and the tag from column {tag}. Set conll_word_column / conll_tag_column.")
            tokens.append(fields[word])
            tags.append(fields[tag])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def read_squad(path: str) -> list[dict]:
    """SQuAD v1/v2 JSON as published, flattened to rows with the columns of the `squad` dataset: id, title,
    context, question, answers = {"text": [...], "answer_start": [...]} (empty for unanswerable questions)."""
    with _open_text(path) as f:
        articles = json.load(f)["data"]
    rows = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({
                    "id": qa["id"],
                    "title": article.get("title", ""),
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]},
                })
    return rows


def _with_validation(raw, args: DataArguments):
    if "validation" in raw or not args.validation_split_percentage:
        return raw
    train = raw["train"]
    if args.streaming:
        # A stream has no length: hold out its first max_eval_samples rows (default 1000).
        held = args.max_eval_samples or 1000
        raw["validation"], raw["train"] = train.take(held), train.skip(held)
        return raw
    # The last rows, as run_clm does: contiguous, so that neighbouring lines of a book do not leak across.
    cut = len(train) - max(1, len(train) * args.validation_split_percentage // 100) if len(train) > 1 else len(train)
    raw["validation"], raw["train"] = train.select(range(cut, len(train))), train.select(range(cut))
    return raw


def _has_rows(dataset) -> bool:
    return next(iter(dataset.take(1)), None) is not None if not hasattr(dataset, "__len__") else len(dataset) > 0


def column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream whose features are unknown until read
        names = list(next(iter(dataset.take(1))).keys())
    return list(names)


def text_rows(dataset, column: str):
    """The strings of one column, read in batches (or row by row from a stream)."""
    if hasattr(dataset, "__len__"):
        return (text for batch in dataset.iter(batch_size=1000) for text in batch[column])
    return (row[column] for row in dataset)


def require_columns(dataset, *names: str, option: str = "text_column_name") -> None:
    """A `ValueError` naming the columns that exist when one of `names` does not."""
    existing = column_names(dataset)
    missing = [name for name in names if name not in existing]
    if missing:
        raise ValueError(
            f"The data has no column {', '.join(map(repr, missing))}; its columns are {', '.join(map(repr, existing))}. "
            f"Set {option} to one of them."
        )


def pack_texts(
    dataset,
    tokenizer,
    text_column: str,
    block_size: int,
    separator_id: int | None,
    num_proc: int | None = None,
    with_offsets: bool = False,
):
    """Tokenize `text_column` and pack the token stream into rows of exactly `block_size` tokens
    (`input_ids`, and `offset_mapping` with `with_offsets`, which whole-word masking reads), with
    `separator_id` (EOS, or SEP for encoders) after each document when given. A batch's remainder shorter
    than a block is dropped, as in run_clm. `datasets` caches the result for file-backed data."""
    from trilm.tokenization import encode_corpus

    separator = [separator_id] if separator_id is not None else []

    def tokenize_and_pack(batch: dict) -> dict:
        texts = batch[text_column]
        if with_offsets:
            encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        else:
            ids = encode_corpus(tokenizer, texts, add_special_tokens=False)
        stream = [token for doc in ids for token in doc + separator]
        usable = len(stream) // block_size * block_size
        packed = {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}
        if with_offsets:
            spans = [tuple(span) for doc in offsets for span in list(doc) + [(0, 0)] * len(separator)]
            packed["offset_mapping"] = [spans[i : i + block_size] for i in range(0, usable, block_size)]
        return packed

    options = {} if not hasattr(dataset, "__len__") else {"num_proc": num_proc, "desc": f"Packing into blocks of {block_size}"}
    return dataset.map(tokenize_and_pack, batched=True, remove_columns=column_names(dataset), **options)
