"""Extractive question answering (SQuAD v1 and v2): long contexts split into windows overlapping by
`doc_stride`, answers mapped to token positions through offsets (the CLS position when a window does not
hold the whole answer, or there is none), and predicted spans mapped back to characters, the best of
`n_best_size` starts and ends over all windows of an example. Metric: SQuAD's exact match and F1."""

import collections
import logging
import re
import string

import numpy as np
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from ..common.data import load_raw_datasets, require_columns
from . import Features, Task

logger = logging.getLogger(__name__)


def load_data(data_args, args):
    """The QA rows; with `version_2_with_negative false`, the rows without an answer (SQuAD v2's unanswerable
    questions) are dropped, with their count logged, so that a v2 file trains and scores on its answerable part."""
    raw = load_raw_datasets(data_args, "extractive_qa")
    if args.version_2_with_negative:
        return raw
    for split in list(raw):
        if args.answer_column_name not in raw[split].column_names:
            continue  # require_columns names the missing column later
        rows = raw[split]
        raw[split] = rows.filter(lambda row: len(row[args.answer_column_name]["text"]) > 0)
        dropped = len(rows) - len(raw[split])
        if dropped:
            logger.warning("version_2_with_negative false: dropped %d of %d %s rows that have no answer (set it true to train "
                           "and score on unanswerable questions too).", dropped, len(rows), split)
        if len(raw[split]) == 0:
            raise ValueError(f"The {split} split has no row with an answer: with unanswerable questions only, set version_2_with_negative true.")
    return raw


def check_answers(rows, args, split: str) -> None:
    """A ValueError naming the first row whose answer text is not found at its `answer_start`."""
    for row in rows:
        answers, context = row[args.answer_column_name], row[args.context_column_name]
        for text, start in zip(answers["text"], answers["answer_start"]):
            if context[start : start + len(text)] != text:
                raise ValueError(
                    f"{split} row {row.get('id', '?')}: the answer {text!r} is not at answer_start={start} of its context "
                    f"(found {context[start:start + len(text)]!r}). Fix answer_start."
                )


def encode_windows(tokenizer, batch, args, max_length: int):
    if max_length <= args.doc_stride:
        raise ValueError(f"doc_stride={args.doc_stride} must be smaller than max_seq_length={max_length}.")
    return tokenizer(
        [q.lstrip() for q in batch[args.question_column_name]],
        batch[args.context_column_name],
        truncation="only_second",
        max_length=max_length,
        stride=args.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def answer_positions(sequence_ids, offsets, answer_start: int | None, answer_text: str) -> tuple[int, int]:
    """(start, end) token positions of an answer in one window; (0, 0), the CLS token, when the window does
    not hold all of it or there is no answer."""
    if answer_start is None:
        return 0, 0
    end_char = answer_start + len(answer_text)
    context = [i for i, sid in enumerate(sequence_ids) if sid == 1]
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= answer_start and offsets[last][1] >= end_char):
        return 0, 0
    start = next(i for i in context if offsets[i][1] > answer_start)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def window_features(tokenizer, args, max_length: int, for_eval: bool):
    """Windows of (question, context) with the answer's token positions as labels; evaluation windows also
    keep their example's index and the context offsets (None elsewhere, so no prediction points at the question)."""

    def encode(batch):
        encoded = encode_windows(tokenizer, batch, args, max_length)
        examples = encoded.pop("overflow_to_sample_mapping")
        starts, ends = [], []
        for i, example in enumerate(examples):
            answers = batch[args.answer_column_name][example]
            first = (answers["answer_start"][0], answers["text"][0]) if answers["text"] else (None, "")
            start, end = answer_positions(encoded.sequence_ids(i), encoded["offset_mapping"][i], *first)
            starts.append(start)
            ends.append(end)
        encoded["start_positions"], encoded["end_positions"] = starts, ends
        if not for_eval:
            encoded.pop("offset_mapping")
            return encoded
        encoded["example_index"] = [batch["example_index"][e] for e in examples]
        encoded["offset_mapping"] = [
            [span if sid == 1 else None for span, sid in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return encoded

    return encode


def best_answers(examples, features, start_logits, end_logits, args) -> list[str]:
    """The predicted answer text of each example from its windows' logits (run_qa's post-processing)."""
    windows, all_offsets = collections.defaultdict(list), features["offset_mapping"]
    for i, example in enumerate(features["example_index"]):
        windows[example].append(i)
    answers = []
    for example, row in enumerate(examples):
        context, null_score, best = row[args.context_column_name], None, None
        for i in windows[example]:
            offsets, starts, ends = all_offsets[i], start_logits[i], end_logits[i]
            window_null = starts[0] + ends[0]
            null_score = window_null if null_score is None else min(null_score, window_null)
            for s in np.argsort(starts)[::-1][: args.n_best_size]:
                for e in np.argsort(ends)[::-1][: args.n_best_size]:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > args.max_answer_length:
                        continue
                    score = starts[s] + ends[e]
                    if best is None or score > best[0]:
                        best = (score, context[offsets[s][0] : offsets[e][1]])
        if best is None or (args.version_2_with_negative and null_score - best[0] > args.null_score_diff_threshold):
            answers.append("")
        else:
            answers.append(best[1])
    return answers


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, reference = normalize(prediction).split(), normalize(gold).split()
    if not predicted or not reference:
        return float(predicted == reference)
    common = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """SQuAD v2's official exact match and F1 in percent (max over the gold answers; an unanswerable
    question's gold is the empty answer), with the answerable / unanswerable parts when both occur."""
    exact, f1 = [], []
    for prediction, golds in zip(predictions, references):
        golds = golds or [""]
        exact.append(max(float(normalize(prediction) == normalize(g)) for g in golds))
        f1.append(max(token_f1(prediction, g) for g in golds))
    scores = {"exact_match": 100 * np.mean(exact), "f1": 100 * np.mean(f1)}
    answerable = np.array([bool(r) for r in references])
    if answerable.any() and not answerable.all():
        for name, part in (("has_answer", answerable), ("no_answer", ~answerable)):
            scores[f"{name}_exact_match"] = 100 * np.mean(np.array(exact)[part])
            scores[f"{name}_f1"] = 100 * np.mean(np.array(f1)[part])
    return {name: float(value) for name, value in scores.items()}


def prepare(raw, tokenizer, data_args, args, training_args, max_length: int, class_names=None) -> Features:
    if not tokenizer.is_fast:
        raise ValueError("question-answering needs a fast tokenizer (offsets map answers to characters).")
    columns = (args.question_column_name, args.context_column_name, args.answer_column_name)
    for split in ("train", "validation"):
        if split in raw:
            require_columns(raw[split], *columns, option="question_column_name / context_column_name / answer_column_name")
            check_answers(raw[split], args, split)
    train = raw["train"].map(window_features(tokenizer, args, max_length, False), batched=True, remove_columns=raw["train"].column_names)
    examples = raw.get("validation")
    features = None
    if examples is not None:
        indexed = examples.add_column("example_index", list(range(len(examples))))
        features = indexed.map(window_features(tokenizer, args, max_length, True), batched=True, remove_columns=indexed.column_names)

    def answers_of(output) -> list[str]:
        start_logits, end_logits = output.predictions[:2]
        return best_answers(examples, features, start_logits, end_logits, args)

    def compute_metrics(output) -> dict:
        return squad_scores(answers_of(output), [a["text"] for a in examples[args.answer_column_name]])

    def predictions(output):
        return [
            {"id": row.get("id"), "question": row[args.question_column_name], "prediction": answer, "answers": row[args.answer_column_name]["text"]}
            for row, answer in zip(examples, answers_of(output))
        ]

    return Features(
        train=train,
        eval=features,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics if examples is not None else None,
        predictions=predictions,
    )


def texts(raw, data_args, args):
    return (text for row in raw["train"] for text in (row[args.question_column_name], row[args.context_column_name]))


TASK = Task(
    families=("encoder",),
    auto_class=AutoModelForQuestionAnswering,
    peft_task_type="QUESTION_ANS",
    load_data=load_data,
    texts=texts,
    prepare=prepare,
)
