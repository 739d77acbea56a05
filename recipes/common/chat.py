"""Chat turns and their rendering: every recipe builds turns with `user_turn` / `assistant_turn`, renders them
through the tokenizer's own chat template, and stops replies at the template's end of turn."""

from typing import NamedTuple

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


def chat_prompts(tokenizer, questions: list):
    """Questions (or messages) rendered through the chat template up to the assistant's turn, as one batch
    padded on the left (for generation)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer([render_prompt(tokenizer, q) for q in questions], add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    batch.pop("token_type_ids", None)
    return batch


class Reply(NamedTuple):
    text: str  # decoded, special tokens left out, stripped
    ended: bool  # it reached the template's end of turn (or EOS) within max_new_tokens
    ids: list[int]  # the generated tokens up to and including the first stop (what reward functions get)


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 64) -> list[Reply]:
    """Greedy replies to prompts (questions, or messages) rendered through the chat template."""
    model.eval()
    stops = chat_stops(tokenizer)
    device = next(model.parameters()).device
    replies = []
    for i in range(0, len(prompts), batch_size):
        batch = chat_prompts(tokenizer, prompts[i : i + batch_size]).to(device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = output[:, batch["input_ids"].shape[1] :]
        stop_ids = torch.tensor(stops, device=new.device)
        ended, lengths = torch.isin(new, stop_ids).any(1).tolist(), reply_mask(new, stop_ids).sum(1).tolist()
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        replies += [Reply(text.strip(), end, row[:length].tolist()) for text, end, row, length in zip(texts, ended, new, lengths)]
    return replies


def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy replies to single-turn questions, rendered through the chat template."""
    return [reply.text for reply in generate_replies(model, tokenizer, questions, max_new_tokens)]


# --------------------------------------------------------------------------- training copies of a template
# TRL's assistant-only loss needs `{% generation %}` markers around what the assistant writes; most small chat
# checkpoints ship ChatML templates without them, and TRL patches only templates it knows by their exact text.
CHATML_TRAINING_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' and DEFAULT_SYSTEM %}{{ '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
PROBES = (  # conversations a training copy must render exactly as the original does
    [{"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}],
)


def renders_as(tokenizer, template: str) -> bool:
    """Whether `template` renders every probe conversation, with and without the generation prompt, exactly as
    the tokenizer's own template does."""
    try:
        return all(
            tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False, add_generation_prompt=prompt)
            == tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt)
            for probe in PROBES for prompt in (False, True)
        )
    except Exception:  # a template that cannot render a probe (e.g. one that refuses a system turn)
        return False


def chatml_training_template(tokenizer) -> str | None:
    """A ChatML template with `{% generation %}` markers that renders exactly as the tokenizer's own (its default
    system turn included, read off a rendering), or None where no such copy matches."""
    rendered = tokenizer.apply_chat_template(PROBES[0], tokenize=False)
    if "<|im_start|>" not in rendered:
        return None
    default_system = ""
    if rendered.startswith("<|im_start|>system\n"):
        default_system = rendered[len("<|im_start|>system\n") : rendered.index("<|im_end|>")]
    template = CHATML_TRAINING_TEMPLATE.replace("DEFAULT_SYSTEM", repr(default_system))
    return template if renders_as(tokenizer, template) else None


def prefix_preserving(tokenizer) -> bool:
    """Whether a prompt rendered with the generation prompt is a prefix of the prompt and its reply rendered
    together: what TRL's prompt/completion masking needs."""
    prompt, reply = PROBES[1][:1], PROBES[1][1:]
    start = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(prompt + reply, tokenize=False).startswith(start)


def training_chat_template(tokenizer) -> tuple[str | None, str]:
    """How SFT can put the loss on assistant tokens with this tokenizer's chat template: (template, how), where
    `how` is "the markers" (the template has generation markers), "TRL's training copy", "a ChatML training
    copy" (both render as the original), or "prompt/completion masking" (template None: each conversation's last
    reply is the completion). A ValueError where none works."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        raise ValueError("sft renders conversations through the tokenizer's chat template, and this tokenizer has none.")
    if has_generation_markers(template):
        return template, "the markers"
    try:
        patched = get_training_chat_template(tokenizer)
        if patched is not None:
            return patched, "TRL's training copy"
    except ValueError:
        pass
    patched = chatml_training_template(tokenizer)
    if patched is not None:
        return patched, "a ChatML training copy"
    if prefix_preserving(tokenizer):
        return None, "prompt/completion masking"
    raise ValueError(
        "The tokenizer's chat template has no {% generation %} markers, trilm cannot make a training copy of it, and a "
        "prompt rendered alone is no prefix of the prompt with its reply, so replies cannot be masked either: pass a "
        "template with {% generation %} markers around the assistant's text (SFTConfig's chat_template_path), or "
        "assistant_only_loss false to train on every token."
    )


def last_reply_as_completion(row: dict) -> dict:
    """A `messages` conversation as TRL's prompt/completion: every turn before the last assistant reply, and it."""
    if "messages" not in row:
        return row
    turns = row["messages"]
    last = max((i for i, turn in enumerate(turns) if turn["role"] == "assistant"), default=len(turns) - 1)
    return {"prompt": turns[:last], "completion": turns[last : last + 1]}
