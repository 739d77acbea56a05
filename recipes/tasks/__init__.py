"""The fine-tuning tasks of `trilm finetune` on Trainer (`classification`, `extractive_qa`, `translation`), and
what each hands the recipe: its data, features, collator, metric and prediction rows. `sft` runs on TRL's
SFTTrainer and is a recipe part of its own (`sft.run`)."""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Features:
    train: object  # the tokenized training set (None when only evaluating)
    eval: object  # the tokenized evaluation set, or None
    collator: Callable
    compute_metrics: Callable | None
    predictions: Callable  # Trainer.predict's output -> rows of predictions.jsonl
    preprocess_logits: Callable | None = None  # keeps only what the metric needs (no full logits accumulated)
    config: dict = field(default_factory=dict)  # model config values the task sets (num_labels, id2label, ...)


@dataclass(frozen=True)
class Task:
    families: tuple[str, ...]
    auto_class: type
    peft_task_type: str
    load_data: Callable  # (DataArguments, FinetuneArguments) -> DatasetDict
    texts: Callable  # (raw, DataArguments, FinetuneArguments) -> the strings a new tokenizer is trained on
    prepare: Callable  # (raw, tokenizer, DataArguments, FinetuneArguments, TrainingArguments, max_length, class_names) -> Features


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics` for classifiers: the predicted class ids, not the logits."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)
