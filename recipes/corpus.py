"""`trilm corpus`: the built-in corpus (`trilm.recipes.common.builtin`) written to files, every kind and split.

    trilm corpus --output_dir runs/corpus [--seed 0]

`load_builtin(kind)`, `build_corpus(seed)` and the answer checker `check_answer` are importable from here too.
"""

from dataclasses import dataclass, field
from pathlib import Path

from .common.args import parse_args
from .common.builtin import KINDS, build_corpus, check_answer, load_builtin  # noqa: F401  (the corpus's public names)
from .common.output import write_jsonl


def write_corpus(output_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write every kind and split as JSON lines (`{kind}_{split}.jsonl`), and the pretraining text also as
    plain text (`text_{split}.txt`, documents separated by blank lines). Returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, splits in build_corpus(seed).items():
        for split, rows in splits.items():
            path = output_dir / f"{kind}_{split}.jsonl"
            write_jsonl(path, rows)
            written.append(path)
    for split, rows in build_corpus(seed)["text"].items():
        path = output_dir / f"text_{split}.txt"
        path.write_text("\n\n".join(row["text"] for row in rows) + "\n", encoding="utf-8")
        written.append(path)
    return written


@dataclass
class CorpusArguments:
    output_dir: str = field(default="runs/corpus", metadata={"help": "the folder the files are written to"})
    seed: int = field(default=0, metadata={"help": "the seed the corpus is generated from"})


def main(argv: list[str]) -> int:
    (args,) = parse_args((CorpusArguments,), argv, "trilm corpus")
    paths = write_corpus(args.output_dir, args.seed)
    size = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} files, {size / 1e6:.1f} MB, to {args.output_dir} (seed {args.seed})")
    return 0
