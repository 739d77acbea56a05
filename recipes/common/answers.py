"""Held-out questions with checkable answers, and the accuracy of a model's greedy replies to them: the
metric `trilm finetune --task sft`, `trilm dpo`, `trilm rlhf` and `trilm quickstart --full` share."""

from .builtin import check_answer, load_builtin
from .chat import generate_answers, generate_replies

REPLY_PROBES = 32  # held-out prompts whose greedy replies are checked for ending their turn, where none can be checked for answers


def held_out_questions(data_args, raw=None) -> list[dict]:
    """Questions with checkable answers that no stage trains on (at most `max_eval_samples`): the
    `question`/`answer` rows of `raw`'s test split (else its validation split), or, when those rows have no
    such columns and no data was given, the built-in corpus's `qa` test split."""
    split = next((name for name in ("test", "validation") if raw is not None and name in raw), None)
    if not split or not {"question", "answer"} <= set(raw[split].column_names or next(iter(raw[split].take(1)), {})):
        if data_args.train_file is not None or data_args.dataset_name is not None:
            return []
        raw, split = load_builtin("qa", data_args.corpus_seed), "test"
    return [{key: row[key] for key in ("question", "answer", "response") if key in row} for row in raw[split]][: data_args.max_eval_samples]


def answer_accuracy(model, tokenizer, questions: list[dict], max_new_tokens: int) -> tuple[float, list[dict]]:
    """The share of greedy replies the corpus's checker accepts, and one row per question (for predictions.jsonl)."""
    replies = generate_answers(model, tokenizer, [q["question"] for q in questions], max_new_tokens)
    rows = [{**q, "prediction": r, "correct": check_answer(r, q["answer"], q.get("response"))} for q, r in zip(questions, replies)]
    return sum(row["correct"] for row in rows) / max(len(rows), 1), rows


def answer_metrics(model, tokenizer, questions: list[dict], max_new_tokens: int, suffix: str = "") -> tuple[dict, list[dict]]:
    """`{"eval_answer_accuracy" + suffix: accuracy}` and the prediction rows, or nothing where no question can be checked."""
    if not questions:
        return {}, []
    accuracy, rows = answer_accuracy(model, tokenizer, questions, max_new_tokens)
    return {f"eval_answer_accuracy{suffix}": accuracy}, rows


def ending_metrics(model, tokenizer, prompts: list, max_new_tokens: int, suffix: str = "") -> dict:
    """`{"eval_replies_ended" + suffix: share}`: the share of greedy replies to `prompts` that end at the chat
    template's end of turn within `max_new_tokens` (a tuned chat model must still stop), or nothing without prompts."""
    if not prompts:
        return {}
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens)
    return {f"eval_replies_ended{suffix}": sum(reply.ended for reply in replies) / len(replies)}
