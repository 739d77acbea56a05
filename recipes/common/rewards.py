"""Rewards: the built-in answer checker as a reward function, user reward functions (`module:function`), and
the scores of reward models (`trilm reward` runs) over token ids, conversations and held-out pairs."""

import importlib
import sys
from pathlib import Path

import torch

from .builtin import check_answer


def answer_reward(completions, answer, response=None, **kwargs) -> list[float]:
    """The built-in corpus's checker as a reward: 1 for a reply that gives the answer (or states it as the
    row's full `response`), else 0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    responses = response or [None] * len(texts)
    return [float(check_answer(text, truth, full)) for text, truth, full in zip(texts, answer, responses)]


BUILTIN_REWARDS = {"answer_reward": answer_reward}


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


def pairwise_metrics(model, pairs, pad_token_id: int) -> dict:
    """Over tokenized preference pairs (RewardTrainer's `chosen_ids` / `rejected_ids`): the share where chosen
    scores above rejected, and the mean margin."""
    chosen = score_ids(model, pairs["chosen_ids"], pad_token_id)
    rejected = score_ids(model, pairs["rejected_ids"], pad_token_id)
    return {"eval_reward_accuracy": (chosen > rejected).float().mean().item(), "eval_reward_margin": (chosen - rejected).mean().item()}
