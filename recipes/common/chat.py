"""Chat turns and their rendering: every recipe builds turns with `user_turn` / `assistant_turn`, renders them
through the tokenizer's own chat template, and stops replies at the template's end of turn."""

import torch


def user_turn(prompt) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; a list of messages stays as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def assistant_turn(text) -> list[dict]:
    """A reply as chat messages: a string becomes one assistant turn; a list of messages stays as it is."""
    return [{"role": "assistant", "content": text}] if isinstance(text, str) else text


def turn_texts(rows, columns: tuple[str, ...]):
    """The text of every turn in the conversation `columns` of `rows` (what a tokenizer trains on)."""
    return (turn["content"] for row in rows for column in columns for turn in row.get(column) or [])


def chat_stops(tokenizer) -> list[int]:
    """The tokens that end a reply: the chat template's end of turn, and EOS."""
    ids = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id)
    return [t for t in dict.fromkeys(ids) if t is not None and t != tokenizer.unk_token_id]


def reply_mask(replies: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """1 for every generated token up to and including the first stop token of its row, else 0."""
    is_stop = torch.isin(replies, stops).long()
    return ((is_stop.cumsum(1) - is_stop) == 0).long()


def render_prompt(tokenizer, prompt) -> str:
    """A prompt (a string, or messages) rendered through the chat template up to the assistant's turn."""
    return tokenizer.apply_chat_template(user_turn(prompt), add_generation_prompt=True, tokenize=False)


def chat_prompts(tokenizer, questions: list[str]):
    """Single-turn questions rendered through the chat template up to the assistant's turn, as one batch
    padded on the left (for generation)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer([render_prompt(tokenizer, q) for q in questions], add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    batch.pop("token_type_ids", None)
    return batch


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy replies to single-turn questions, rendered through the chat template."""
    model.eval()
    stops = chat_stops(tokenizer)
    device = next(model.parameters()).device
    replies = []
    for i in range(0, len(questions), batch_size):
        batch = chat_prompts(tokenizer, questions[i : i + batch_size]).to(device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        replies += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [reply.strip() for reply in replies]
