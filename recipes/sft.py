"""Instruction tuning (`task: sft`) on TRL's `SFTTrainer`: conversations (`messages`), prompt/completion
rows, Alpaca-style instruction files (`instruction` / `input` / `output`, or `response`) and question/answer
rows (the built-in corpus), all rendered through the tokenizer's chat template with the loss on assistant
tokens only. Packing (`packing: true`) keeps packed conversations from attending to each other
(position ids restart per conversation). Metric: held-out loss, and where answers can be checked (the
built-in corpus, or `question`/`answer` rows) the exact-match accuracy of greedy answers to held-out
questions, before and after training."""

import torch
from transformers import AutoModelForCausalLM
from trl import SFTTrainer
from trl.trainer.utils import get_peft_config

from .corpus import check_answer, load_builtin
from .data import column_names, load_raw_datasets
from .models import load_model, load_tokenizer
from .output import final_metrics, write_arguments

families = ("decoder",)


def to_conversation(row: dict) -> dict:
    """One row as TRL's conversational prompt/completion (or `messages`) format."""
    if "messages" in row:
        return {"messages": row["messages"]}
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            prompt, completion = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
        return {"prompt": prompt, "completion": completion}
    if "instruction" in row:
        response = row.get("output", row.get("response"))
        request = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    else:  # question/answer rows: the full-sentence response where there is one (the built-in corpus)
        request, response = row["question"], row.get("response") or row["answer"]
    return {"prompt": [{"role": "user", "content": request}], "completion": [{"role": "assistant", "content": response}]}


def check_columns(dataset, split: str) -> None:
    names = set(column_names(dataset))
    layouts = ({"messages"}, {"prompt", "completion"}, {"instruction", "output"}, {"instruction", "response"}, {"question", "answer"})
    if not any(layout <= names for layout in layouts):
        raise ValueError(
            f"The {split} data has columns {', '.join(sorted(names))}; sft reads messages, prompt/completion, "
            "instruction/input/output (or response), or question/answer."
        )


def turn_texts(rows, columns: tuple[str, ...]):
    """The text of every turn in the conversation `columns` of `rows` (what a tokenizer trains on)."""
    return (turn["content"] for row in rows for column in columns for turn in row.get(column) or [])


def conversations(raw):
    for split, rows in raw.items():
        check_columns(rows, split)
    return raw.map(to_conversation, remove_columns=column_names(raw["train"]))


def held_out_questions(data_args, raw=None) -> list[dict]:
    """Questions with checkable answers that no stage trains on (at most `max_eval_samples`): the
    `question`/`answer` rows of `raw`'s test split (else its validation split), or, when those rows have no
    such columns and no data was given, the built-in corpus's `qa` test split."""
    split = next((name for name in ("test", "validation") if raw is not None and name in raw), None)
    if not split or not {"question", "answer"} <= set(column_names(raw[split])):
        if data_args.train_file is not None or data_args.dataset_name is not None:
            return []
        raw, split = load_builtin("qa", data_args.corpus_seed), "test"
    return [{key: row[key] for key in ("question", "answer", "response") if key in row} for row in raw[split]][: data_args.max_eval_samples]


def chat_stops(tokenizer) -> list[int]:
    """The tokens that end a reply: the chat template's end of turn, and EOS."""
    ids = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id)
    return [t for t in dict.fromkeys(ids) if t is not None and t != tokenizer.unk_token_id]


def reply_mask(replies: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """1 for every generated token up to and including the first stop token of its row, else 0."""
    is_stop = torch.isin(replies, stops).long()
    return ((is_stop.cumsum(1) - is_stop) == 0).long()


def chat_prompts(tokenizer, questions: list[str]):
    """Single-turn questions rendered through the chat template up to the assistant's turn, as one batch
    padded on the left (for generation)."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
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


def answer_accuracy(model, tokenizer, questions: list[dict], max_new_tokens: int) -> tuple[float, list[dict]]:
    replies = generate_answers(model, tokenizer, [q["question"] for q in questions], max_new_tokens)
    rows = [{**q, "prediction": r, "correct": check_answer(r, q["answer"], q.get("response"))} for q, r in zip(questions, replies)]
    return sum(row["correct"] for row in rows) / max(len(rows), 1), rows


def before_training(model, tokenizer, arguments: tuple, questions: list[dict], new_adapter: bool) -> tuple[dict, object]:
    """What sft, rlhf and dpo do before their trainer: the held-out answer accuracy before training, the LoRA
    config from TRL's names (targets checked; the trainer wraps the model), and `trilm_args.yaml`."""
    from .finetune import check_lora_targets

    model_args, _, args, training_args = arguments
    metrics = {}
    if questions and training_args.do_train:
        metrics["eval_answer_accuracy_before_training"], _ = answer_accuracy(model, tokenizer, questions, args.max_new_tokens)
    peft_config = None
    if new_adapter:
        check_lora_targets(model, model_args.lora_target_modules)
        model_args.lora_task_type = model_args.lora_task_type or "CAUSAL_LM"
        peft_config = get_peft_config(model_args)
    if training_args.process_index == 0:
        write_arguments(training_args.output_dir, *arguments)
    return metrics, peft_config


def after_training(trainer, tokenizer, questions: list[dict], max_new_tokens: int, metrics: dict) -> list[dict]:
    """The held-out answer accuracy after training (into `metrics`), and the rows of `predictions.jsonl`."""
    if not questions:
        return []
    metrics["eval_answer_accuracy"], rows = answer_accuracy(trainer.model, tokenizer, questions, max_new_tokens)
    return rows


def run(model_args, data_args, args, training_args, family: str, start: float):
    """The SFT part of `trilm finetune` (`recipes/finetune.py` has set the seed and checked the family)."""
    from .finetune import finish

    raw = load_raw_datasets(data_args, "qa")
    questions = held_out_questions(data_args, raw)
    chats = conversations(raw)
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(chats["train"], ("messages", "prompt", "completion")))
    if tokenizer.chat_template is None:
        raise ValueError("sft renders conversations through the tokenizer's chat template, and this tokenizer has none.")
    model = load_model(model_args, family, tokenizer, AutoModelForCausalLM)
    model.generation_config.eos_token_id = chat_stops(tokenizer)
    arguments = (model_args, data_args, args, training_args)
    new_adapter = model_args.use_peft and not hasattr(model, "peft_config")  # an adapter folder comes with its adapter
    metrics, peft_config = before_training(model, tokenizer, arguments, questions, new_adapter)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=chats["train"],
        eval_dataset=chats.get("validation"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if training_args.do_train:
        metrics |= final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
    if "validation" in chats and training_args.do_eval:
        metrics |= final_metrics(None, trainer.evaluate(), None)
    rows = after_training(trainer, tokenizer, questions, args.max_new_tokens, metrics)
    finish(trainer, tokenizer, arguments, metrics, rows, start)
    return trainer, metrics
