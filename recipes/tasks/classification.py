"""Sequence classification (single sentences or pairs; accuracy and macro-F1) and token classification
(named entities: words aligned to sub-word tokens, entity-level precision/recall/F1 with `seqeval`)."""

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from ..common.data import DataArguments, column_names, load_raw_datasets, require_columns
from . import Features, Task, argmax_logits


def first_column(dataset, given: str | None, candidates: tuple[str, ...], option: str) -> str:
    """`given` when set (checked to exist), else the first of `candidates` the data has."""
    if given is not None:
        require_columns(dataset, given, option=option)
        return given
    found = next((name for name in candidates if name in column_names(dataset)), None)
    if found is None:
        require_columns(dataset, candidates[0], option=option)
    return found


def label_names(raw, column: str, given: list[str] | None, per_token: bool = False) -> list[str]:
    """The classes, in id order: `given` (TrainingArguments' `label_names`), a `ClassLabel`'s names, or the
    sorted distinct labels of the training rows."""
    if given:
        return [str(name) for name in given]
    feature = raw["train"].features[column]
    feature = getattr(feature, "feature", feature)
    if hasattr(feature, "names"):
        return list(feature.names)
    values = raw["train"][column]
    distinct = {v for row in values for v in row} if per_token else set(values)
    return [str(v) for v in sorted(distinct)]


def label_ids(value, names, split: str, index: int, as_int: bool):
    """The id of one label, or a ValueError naming the row."""
    name = names[value] if as_int else str(value)
    if name not in names:
        raise ValueError(f"{split} row {index}: label {value!r} is not one of label_names {names}. Add it to label_names or fix the row.")
    return names.index(name)


def label_config(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def encode_splits(raw, encode) -> dict:
    """The train and validation rows through `encode(batch, indices, split)`, their own columns dropped."""
    return {
        split: rows.map(encode, batched=True, with_indices=True, fn_kwargs={"split": split}, remove_columns=rows.column_names)
        for split, rows in raw.items()
        if split in ("train", "validation")
    }


def _class_label(raw, column) -> bool:
    feature = raw["train"].features[column]
    return hasattr(getattr(feature, "feature", feature), "names")


# ------------------------------------------------------------------------------------ sequence classification
def sentence_columns(dataset, data_args: DataArguments, args) -> tuple[str, str | None, str]:
    text = first_column(dataset, data_args.text_column_name, ("sentence", "text", "sentence1"), "text_column_name")
    pair = args.text_pair_column_name or ("sentence2" if text == "sentence1" and "sentence2" in column_names(dataset) else None)
    if pair:
        require_columns(dataset, pair, option="text_pair_column_name")
    label = first_column(dataset, data_args.label_column_name, ("label", "labels"), "label_column_name")
    return text, pair, label


def classification_metrics(eval_prediction) -> dict:
    predicted, labels = eval_prediction.predictions, eval_prediction.label_ids
    f1 = []
    for label in np.unique(np.concatenate([labels, predicted])):
        tp = np.sum((predicted == label) & (labels == label))
        precision, recall = tp / max(np.sum(predicted == label), 1), tp / max(np.sum(labels == label), 1)
        f1.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(predicted == labels)), "f1": float(np.mean(f1))}


def prepare_sequences(raw, tokenizer, data_args, args, training_args, max_length: int, class_names=None) -> Features:
    text, pair, label = sentence_columns(raw["train"], data_args, args)
    names = label_names(raw, label, class_names)
    as_int = _class_label(raw, label)

    def encode(batch, indices, split):
        encoded = tokenizer(batch[text], batch[pair] if pair else None, truncation=True, max_length=max_length)
        encoded["labels"] = [label_ids(v, names, split, i, as_int) for v, i in zip(batch[label], indices)]
        return encoded

    splits = encode_splits(raw, encode)
    eval_rows = raw.get("validation")

    def predictions(output):
        return [
            {"text": row[text], **({"text_pair": row[pair]} if pair else {}), "label": names[ref], "prediction": names[int(p)]}
            for row, ref, p in zip(eval_rows, output.label_ids, output.predictions)
        ]

    return Features(
        train=splits.get("train"),
        eval=splits.get("validation"),
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics,
        preprocess_logits=argmax_logits,
        predictions=predictions,
        config=label_config(names),
    )


def sentence_texts(raw, data_args, args):
    text, pair, _ = sentence_columns(raw["train"], data_args, args)
    return (t for row in raw["train"] for t in ([row[text], row[pair]] if pair else [row[text]]))


SEQUENCE = Task(
    families=("encoder", "decoder"),
    auto_class=AutoModelForSequenceClassification,
    peft_task_type="SEQ_CLS",
    load_data=lambda data_args, args: load_raw_datasets(data_args, "classification"),
    texts=sentence_texts,
    prepare=prepare_sequences,
)


# ------------------------------------------------------------------------------------ token classification
def tag_columns(dataset, data_args: DataArguments) -> tuple[str, str]:
    words = first_column(dataset, data_args.text_column_name, ("tokens", "words"), "text_column_name")
    tags = first_column(dataset, data_args.label_column_name, ("tags", "ner_tags", "labels"), "label_column_name")
    return words, tags


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """One label per token: a word's label on its first sub-token, -100 (ignored) on the rest and on special tokens."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(-100 if word is None or word == previous else word_labels[word])
        previous = word
    return aligned


def entity_metrics(names: list[str]):
    def compute(eval_prediction) -> dict:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        predicted, gold = [], []
        for pred_row, label_row in zip(eval_prediction.predictions, eval_prediction.label_ids):
            keep = label_row != -100
            predicted.append([names[i] for i in pred_row[keep]])
            gold.append([names[i] for i in label_row[keep]])
        return {
            "precision": precision_score(gold, predicted),
            "recall": recall_score(gold, predicted),
            "f1": f1_score(gold, predicted),
            "accuracy": accuracy_score(gold, predicted),
        }

    return compute


def prepare_tokens(raw, tokenizer, data_args, args, training_args, max_length: int, class_names=None) -> Features:
    if not tokenizer.is_fast:
        raise ValueError("token-classification needs a fast tokenizer (word ids align words with sub-word tokens).")
    words, tags = tag_columns(raw["train"], data_args)
    names = label_names(raw, tags, class_names, per_token=True)
    as_int = _class_label(raw, tags)

    def encode(batch, indices, split):
        encoded = tokenizer(batch[words], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = [
            align_labels(encoded.word_ids(n), [label_ids(v, names, split, index, as_int) for v in row_tags])
            for n, (row_tags, index) in enumerate(zip(batch[tags], indices))
        ]
        return encoded

    splits = encode_splits(raw, encode)
    eval_rows = raw.get("validation")

    def predictions(output):
        rows = []
        for row, pred_row, label_row in zip(eval_rows, output.predictions, output.label_ids):
            keep = label_row[: len(pred_row)] != -100
            predicted = [names[i] for i in pred_row[: len(keep)][keep]]
            rows.append({"tokens": row[words], "tags": [names[label_ids(v, names, "validation", 0, as_int)] for v in row[tags]],
                         "prediction": predicted})
        return rows

    return Features(
        train=splits.get("train"),
        eval=splits.get("validation"),
        collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=entity_metrics(names),
        preprocess_logits=argmax_logits,
        predictions=predictions,
        config=label_config(names),
    )


def word_texts(raw, data_args, args):
    words, _ = tag_columns(raw["train"], data_args)
    return (" ".join(row[words]) for row in raw["train"])


TOKENS = Task(
    families=("encoder",),
    auto_class=AutoModelForTokenClassification,
    peft_task_type="TOKEN_CLS",
    load_data=lambda data_args, args: load_raw_datasets(data_args, "tagging"),
    texts=word_texts,
    prepare=prepare_tokens,
)
