"""Preference pairs and prompts, the data of `trilm reward`, `trilm dpo` and `trilm rlhf` (from files, a dataset,
or the built-in corpus), and the checks of their lengths and reference model.

Rows are put into TRL's conversational formats, so that every stage renders text through the same chat
template as `trilm finetune --task sft`:
- preferences: `prompt`/`chosen`/`rejected` (strings become a user turn and assistant replies), `chosen`/
  `rejected` conversations, or HH-RLHF's published text (`"\\n\\nHuman: ... \\n\\nAssistant: ..."`), split
  into messages with the shared turns as the prompt;
- prompts (for online RL): `prompt` (string or conversation), `question` (the built-in corpus), or
  `messages` (every turn before the last assistant reply); other columns (`answer`) go to reward functions.
"""

import re

from .chat import assistant_turn, user_turn
from .data import column_names
from .models import adapter_base


# ----------------------------------------------------------------------------------------------- rows
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_messages(text: str) -> list[dict]:
    """HH-RLHF's `"\\n\\nHuman: ...\\n\\nAssistant: ..."` text as chat messages."""
    parts = HH_TURN.split(text)
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]



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
    return {"prompt": user_turn(row["prompt"]), "chosen": assistant_turn(chosen), "rejected": assistant_turn(rejected)}


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


def held_out_prompts(prompts, data_args) -> list[dict]:
    """The user's held-out prompt rows (the test split, else the validation split, at most `max_eval_samples`), on
    which rlhf measures the reward of greedy replies before and after training; none for the built-in corpus,
    whose held-out questions are checked for their answers."""
    split = next((name for name in ("test", "validation") if name in prompts), None)
    if split is None or (data_args.train_file is None and data_args.dataset_name is None):
        return []
    return list(prompts[split])[: data_args.max_eval_samples]


# ---------------------------------------------------------------------------------------------- checks
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
