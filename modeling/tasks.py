"""Small inference helpers for the tasks whose pipelines transformers v5 removed: extractive question
answering (`answer`) and text-to-text generation (`translate`, `summarize`).

    from trilm.modeling.tasks import answer, translate
    answer(qa_model, tokenizer, "Who wrote it?", long_text)   # {"answer", "score", "start", "end"}
    translate(seq2seq_model, tokenizer, ["a cat"], num_beams=4)  # ["eine Katze"]
"""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    context: str,
    max_length: int = 384,
    stride: int = 128,
    max_answer_length: int = 30,
    handle_impossible_answer: bool = False,
) -> dict:
    """The best answer span of `context` for `question`, as the question-answering pipeline gave it.

    Long contexts are split into windows of `max_length` tokens overlapping by `stride`; each window scores
    every span of at most `max_answer_length` context tokens by start + end log-probability, and the best
    span over all windows wins. With `handle_impossible_answer`, an empty answer is returned when the CLS
    token ("no answer", as SQuAD v2 models learn it) outscores every span.
    Returns {"answer": str, "score": float, "start": int, "end": int} with character offsets in `context`.
    """
    if not question.strip() or not context.strip():
        raise ValueError("answer() needs a non-empty question and a non-empty context.")
    if not tokenizer.is_fast:
        raise ValueError("answer() needs a fast tokenizer (offset mappings locate the answer in the context).")
    encoding = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )
    offsets = encoding.pop("offset_mapping")
    encoding.pop("overflow_to_sample_mapping", None)
    device = next(model.parameters()).device
    outputs = model(**{k: v.to(device) for k, v in encoding.items()})

    best = {"answer": "", "score": float("-inf"), "start": 0, "end": 0}
    null_score = float("inf")
    for window in range(offsets.shape[0]):
        is_context = torch.tensor([sid == 1 for sid in encoding.sequence_ids(window)], device=device)
        start = outputs.start_logits[window].float().log_softmax(-1)
        end = outputs.end_logits[window].float().log_softmax(-1)
        null_score = min(null_score, float(start[0] + end[0]))
        scores = start[:, None] + end[None, :]
        length = torch.arange(scores.shape[0], device=device)
        valid = (length[None, :] >= length[:, None]) & (length[None, :] - length[:, None] < max_answer_length)
        valid &= is_context[:, None] & is_context[None, :]
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(scores.argmax())
        s, e = divmod(flat, scores.shape[1])
        if float(scores[s, e]) > best["score"]:
            char_start, char_end = int(offsets[window, s, 0]), int(offsets[window, e, 1])
            best = {"answer": context[char_start:char_end], "score": float(scores[s, e]), "start": char_start, "end": char_end}
    if handle_impossible_answer and null_score > best["score"]:
        best = {"answer": "", "score": null_score, "start": 0, "end": 0}
    best["score"] = float(torch.tensor(best["score"]).exp())
    return best


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: str | list[str],
    prefix: str = "",
    max_input_length: int | None = None,
    **generate_kwargs,
) -> str | list[str]:
    """Generate the target text for each source text with `model.generate` (beam search, sampling, ...:
    any `generate` argument; 128 new tokens unless `max_new_tokens` says otherwise). `prefix` is prepended to
    every input (T5-style task prefixes); long inputs are truncated to `max_input_length` tokens (default: the
    tokenizer's `model_max_length`, capped at the model's `max_position_embeddings`)."""
    single = isinstance(texts, str)
    batch = [prefix + text for text in ([texts] if single else texts)]
    if not batch:
        raise ValueError("No texts given: pass a string or a non-empty list of strings.")
    limit = max_input_length or min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 10**9))
    inputs = tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    device = next(model.parameters()).device
    generated = model.generate(**{k: v.to(device) for k, v in inputs.items()}, **{"max_new_tokens": 128, **generate_kwargs})
    decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return decoded[0] if single else decoded


def summarize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: str | list[str],
    prefix: str = "",
    max_input_length: int | None = None,
    **generate_kwargs,
) -> str | list[str]:
    """Summaries of `texts`: `translate` with shorter outputs by default (64 new tokens)."""
    return translate(model, tokenizer, texts, prefix, max_input_length, **{"max_new_tokens": 64, **generate_kwargs})
