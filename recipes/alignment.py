"""What `trilm reward`, `trilm rlhf` and `trilm dpo` share: their script arguments, the preference and prompt
rows (from files, a dataset, or the built-in corpus), the policy and its reference, and the reward sources.

Rows are put into TRL's conversational formats, so that every stage renders text through the same chat
template as `trilm finetune --task sft`:
- preferences: `prompt`/`chosen`/`rejected` (strings become a user turn and assistant replies), `chosen`/
  `rejected` conversations, or HH-RLHF's published text (`"\\n\\nHuman: ... \\n\\nAssistant: ..."`), split
  into messages with the shared turns as the prompt;
- prompts (for online RL): `prompt` (string or conversation), `question` (the built-in corpus), or
  `messages` (every turn before the last assistant reply); other columns (`answer`) go to reward functions.
"""

import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .corpus import check_answer
from .data import column_names
from .models import adapter_base, load_model
from .sft import chat_stops


@dataclass
class AlignmentArguments:
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per held-out question (answer accuracy)"})
    merge: bool = field(default=False, metadata={"help": "LoRA: also write a merged plain checkpoint to output_dir/merged"})
    tune_cpu_allocator: bool = field(default=True, metadata={"help": "on CPU, keep freed memory in the heap (~20%% faster steps)"})


# ----------------------------------------------------------------------------------------------- rows
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_messages(text: str) -> list[dict]:
    """HH-RLHF's `"\\n\\nHuman: ...\\n\\nAssistant: ..."` text as chat messages."""
    parts = HH_TURN.split(text)
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def user_turn(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def reply(text) -> list[dict]:
    return [{"role": "assistant", "content": text}] if isinstance(text, str) else text


def preference_row(row: dict) -> dict:
    """One preference row as TRL's conversational prompt/chosen/rejected."""
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("prompt") is None and isinstance(chosen, str) and HH_TURN.match(chosen):
        chosen, rejected = hh_messages(chosen), hh_messages(rejected)
    if row.get("prompt") is None and isinstance(chosen, list):
        # The shared turns are the prompt; it ends with a user turn, and both replies keep at least one turn.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        while shared > 0 and chosen[shared - 1]["role"] != "user":
            shared -= 1
        return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    if row.get("prompt") is None:
        raise ValueError("Preference rows of plain text need a prompt column, or HH-RLHF's Human:/Assistant: text.")
    return {"prompt": user_turn(row["prompt"]), "chosen": reply(chosen), "rejected": reply(rejected)}


def preference_dataset(raw):
    """`raw` (a DatasetDict) as conversational preference pairs; a ValueError naming the columns that exist
    when `chosen` or `rejected` is missing."""
    for split, rows in raw.items():
        names = column_names(rows)
        missing = [name for name in ("chosen", "rejected") if name not in names]
        if missing:
            raise ValueError(
                f"The {split} preference data has no {' or '.join(missing)} column; its columns are {', '.join(names)}. "
                "Preference rows need chosen and rejected (and a prompt, unless they are conversations or HH-RLHF text)."
            )
    return raw.map(preference_row, remove_columns=column_names(raw["train"]))


def prompt_row(row: dict) -> dict:
    if "prompt" in row:
        return {"prompt": user_turn(row["prompt"])}
    if "question" in row:
        return {"prompt": user_turn(row["question"])}
    turns = row["messages"]
    last = max((i for i, turn in enumerate(turns) if turn["role"] == "assistant"), default=len(turns))
    return {"prompt": turns[:last]}


def prompt_dataset(raw):
    """`raw` as conversational prompts for online RL; other columns stay for reward functions."""
    for split, rows in raw.items():
        names = column_names(rows)
        if not {"prompt", "question", "messages"} & set(names):
            raise ValueError(f"The {split} prompt data has columns {', '.join(names)}; rlhf reads prompt, question or messages.")
    return raw.map(prompt_row)


# ----------------------------------------------------------------------------------- policy, reference
# An adapter folder (a LoRA SFT run) is merged into its base first, so that the SFT model, not the base, is
# what reward modelling, RL or DPO starts from and, with a new LoRA adapter, the adapter-disabled reference.
def load_merged(model_args, family: str, tokenizer, auto_class, **config_fields):
    """The model of `model_name_or_path` (or a new one), an adapter folder merged into its base."""
    model = load_model(model_args, family, tokenizer, auto_class, **config_fields)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    if model.can_generate():
        model.generation_config.eos_token_id = chat_stops(tokenizer)
    return model


def check_reference(model_args, beta: float) -> None:
    """TRL builds the frozen reference from the policy's folder (full training) or disables the adapter
    (LoRA): a ValueError where neither gives the starting model."""
    if beta <= 0 or model_args.use_peft:
        return
    if model_args.model_name_or_path is None:
        raise ValueError(
            f"beta={beta} penalises the distance to a reference model, and a new model (family + model:) has none: "
            "start from a checkpoint (model_name_or_path), or set beta 0."
        )
    if adapter_base(model_args.model_name_or_path):
        raise ValueError(
            f"{model_args.model_name_or_path} is a LoRA adapter: full training with beta={beta} would take its base, not the "
            "adapted model, as reference. Train with use_peft true (the merged adapter is then the reference), or start "
            "from the merged folder (trilm finetune --merge true writes merged/)."
        )


def check_max_length(max_length: int | None, config) -> int:
    """Tokens per preference sequence: the model's maximum unless set; beyond it only with rotary positions."""
    if max_length is None:
        return config.max_position_embeddings
    if max_length > config.max_position_embeddings and config.position_embedding_type == "learned":
        raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={config.max_position_embeddings}.")
    return max_length


def check_pairs_kept(trainer, pairs, max_length: int) -> None:
    """TRL drops pairs longer than max_length: a ValueError, before training, when a split loses every pair."""
    for split, dataset in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset)):
        if dataset is not None and len(dataset) == 0:
            raise ValueError(
                f"Every {split} pair ({len(pairs[split])}) is longer than max_length={max_length} tokens and was dropped: "
                "raise max_length or shorten the data."
            )


# ---------------------------------------------------------------------------------------------- rewards
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
