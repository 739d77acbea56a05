"""Rewards: the built-in answer checker as a reward function, user reward functions (`module:function`), and
the scores of reward models (`trilm reward` runs) over token ids, conversations and held-out pairs."""

import importlib
import math
import re
import sys
from pathlib import Path

import torch
from torch import nn

from .builtin import check_answer
from .chat import assistant_turn, generate_replies, user_turn


def reply_text(completion) -> str:
    """A completion as TRL passes it to reward functions (text, or the reply's messages) as text."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def answer_reward(completions, answer, response=None, **kwargs) -> list[float]:
    """The built-in corpus's checker as a reward: 1 for a reply that gives the answer (or states it as the
    row's full `response`), else 0."""
    responses = response or [None] * len(completions)
    return [float(check_answer(reply_text(c), truth, full)) for c, truth, full in zip(completions, answer, responses)]


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def number_reward(completions, answer, **kwargs) -> list[float | None]:
    """1 for a reply whose last number equals the row's numeric `answer` (as GSM8K-style checkers read replies:
    "2 + 8 = 10" answers 10), else 0; None (no reward) for a row whose answer is no number."""
    rewards = []
    for completion, truth in zip(completions, answer):
        numbers, truth = NUMBER.findall(reply_text(completion).replace(",", "")), str(truth).replace(",", "").strip()
        if not NUMBER.fullmatch(truth):
            rewards.append(None)
        else:
            rewards.append(float(bool(numbers) and float(numbers[-1]) == float(truth)))
    return rewards


BUILTIN_REWARDS = {"answer_reward": answer_reward, "number_reward": number_reward}


def import_reward(name: str):
    """A reward function from `module:function` (or a dotted path), or a built-in one by name."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    module_name, _, attribute = name.rpartition(":") if ":" in name else name.rpartition(".")
    if not module_name:
        raise ValueError(f"reward_funcs: {name!r} is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor module:function.")
    sys.path.insert(0, str(Path.cwd()))
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward_funcs: {name!r} does not import ({error}); give module:function importable from here.") from error
    if not callable(function):
        raise ValueError(f"reward_funcs: {name!r} is not callable.")
    return function


def check_reward_tokenizer(path: str, tokenizer, role: str = "reward model") -> None:
    """A reward (or value) model reads the policy's replies as token ids of its own vocabulary: the two must agree."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(path)
    if theirs.get_vocab() != tokenizer.get_vocab() or theirs.chat_template != tokenizer.chat_template:
        raise ValueError(
            f"The {role} {path} has a different tokenizer (vocabulary or chat template) from the policy's: "
            f"train the {role} from the same base (trilm reward --model_name_or_path <the SFT run>)."
        )


# --------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_ids(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 64) -> torch.Tensor:
    """A reward model's scores (the `score` head at the last non-pad token) of token-id sequences."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size]
        width = max(map(len, chunk))
        input_ids = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in chunk], device=device)
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in chunk], device=device)
        scores.append(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def score_conversations(model, tokenizer, conversations: list[list[dict]]) -> torch.Tensor:
    """Reward-model scores of whole conversations, rendered through the chat template as in training."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    return score_ids(model, tokenizer(texts, add_special_tokens=False)["input_ids"], tokenizer.pad_token_id)


def score_replies(rewards: list, weights, tokenizer, rows: list[dict], texts: list[str], ids: list[list[int]], **extra) -> torch.Tensor:
    """The weighted sum of the rewards of each reply `texts[i]` to `rows[i]["prompt"]`: reward models read prompt and
    reply through the chat template, as they were trained; functions are called as TRL calls them (prompts,
    completions, completion_ids and the rows' other columns). A reward of None counts as nothing."""
    prompts = [row["prompt"] for row in rows]
    conversational = isinstance(prompts[0], list)
    completions = [assistant_turn(text) for text in texts] if conversational else texts
    columns = {key: [row[key] for row in rows] for key in rows[0] if key not in ("prompt", "input_ids")}
    per_reward = []
    for reward in rewards:
        if isinstance(reward, nn.Module):
            chats = [user_turn(prompt) + assistant_turn(text) for prompt, text in zip(prompts, texts)]
            values = score_conversations(reward, tokenizer, chats)
        else:
            given = reward(prompts=prompts, completions=completions, completion_ids=ids, **columns, **extra)
            values = torch.tensor([math.nan if v is None else float(v) for v in given])
        per_reward.append(values.float().cpu())
    weights = torch.as_tensor(weights if weights is not None else [1.0] * len(rewards), dtype=torch.float32).cpu()
    return (torch.stack(per_reward, dim=1) * weights).nansum(dim=1)


def held_out_reward(model, tokenizer, rows: list[dict], rewards: list, weights, max_new_tokens: int, suffix: str = "") -> tuple[dict, list[dict]]:
    """`{"eval_reward" + suffix: mean}`, the mean weighted reward of greedy replies to held-out prompt rows (a
    `prompt` and the columns reward functions read), and one row per prompt with its reply and reward (for
    predictions.jsonl); nothing where there are no rows."""
    if not rows:
        return {}, []
    replies = generate_replies(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens)
    texts = [reply.text for reply in replies]
    scores = score_replies(rewards, weights, tokenizer, rows, texts, [reply.ids for reply in replies])
    predictions = [{**row, "prediction": text, "reward": score} for row, text, score in zip(rows, texts, scores.tolist())]
    return {f"eval_reward{suffix}": scores.mean().item()}, predictions


def pairwise_metrics(model, pairs, pad_token_id: int) -> dict:
    """Over tokenized preference pairs (RewardTrainer's `chosen_ids` / `rejected_ids`): the share where chosen
    scores above rejected, and the mean margin."""
    chosen = score_ids(model, pairs["chosen_ids"], pad_token_id)
    rejected = score_ids(model, pairs["rejected_ids"], pad_token_id)
    return {"eval_reward_accuracy": (chosen > rejected).float().mean().item(), "eval_reward_margin": (chosen - rejected).mean().item()}
