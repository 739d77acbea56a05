"""Instruction tuning (`task: sft`) on TRL's `SFTTrainer`: conversations (`messages`), prompt/completion
rows, Alpaca-style instruction files (`instruction` / `input` / `output`, or `response`) and question/answer
rows (the built-in corpus), all rendered through the tokenizer's chat template with the loss on assistant
tokens only. Packing (`packing: true`) keeps packed conversations from attending to each other
(position ids restart per conversation). Metric: held-out loss, and where answers can be checked (the
built-in corpus, or `question`/`answer` rows) the exact-match accuracy of greedy answers to held-out
questions, else the share of greedy replies to held-out prompts that end their turn within `max_new_tokens`
(`eval_replies_ended`), before and after training."""

from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from ..common.answers import REPLY_PROBES, answer_metrics, ending_metrics, held_out_questions
from ..common.chat import assistant_turn, chat_stops, last_reply_as_completion, training_chat_template, turn_texts, user_turn
from ..common.data import column_names, load_raw_datasets
from ..common.lora import lora_config
from ..common.models import load_model, load_tokenizer
from ..common.output import final_metrics, finish, record_arguments, show_progress

FAMILIES = ("decoder",)


def to_conversation(row: dict) -> dict:
    """One row as TRL's conversational prompt/completion (or `messages`) format."""
    if "messages" in row:
        return {"messages": row["messages"]}
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        return {"prompt": user_turn(prompt), "completion": assistant_turn(completion)}
    if "instruction" in row:
        response = row.get("output", row.get("response"))
        request = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    else:  # question/answer rows: the full-sentence response where there is one (the built-in corpus)
        request, response = row["question"], row.get("response") or row["answer"]
    return {"prompt": user_turn(request), "completion": assistant_turn(response)}


def check_columns(dataset, split: str) -> None:
    names = set(column_names(dataset))
    layouts = ({"messages"}, {"prompt", "completion"}, {"instruction", "output"}, {"instruction", "response"}, {"question", "answer"})
    if not any(layout <= names for layout in layouts):
        raise ValueError(
            f"The {split} data has columns {', '.join(sorted(names))}; sft reads messages, prompt/completion, "
            "instruction/input/output (or response), or question/answer."
        )



def conversations(raw):
    for split, rows in raw.items():
        check_columns(rows, split)
    return raw.map(to_conversation, remove_columns=column_names(raw["train"]))


def ending_probes(chats, questions: list[dict]) -> list:
    """Held-out prompts (every turn before the last reply) whose replies are checked for ending their turn, where
    no question can be checked for its answer."""
    if questions or "validation" not in chats:
        return []
    return [last_reply_as_completion(row)["prompt"] for row in chats["validation"].select(range(min(REPLY_PROBES, len(chats["validation"]))))]


def run(model_args, data_args, args, training_args, family: str, start: float):
    """The SFT part of `trilm finetune` (`recipes/finetune.py` has set the seed and checked the family)."""
    raw = load_raw_datasets(data_args, "qa")
    questions = held_out_questions(data_args, raw)
    chats = conversations(raw)
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(chats["train"], ("messages", "prompt", "completion")))
    # The loss on assistant tokens: through the checkpoint's own template where it marks them, else a training
    # copy that renders the same text with the markers, else with each conversation's last reply as the completion.
    shipped = tokenizer.chat_template
    template, how = training_chat_template(tokenizer) if training_args.assistant_only_loss else (shipped, "every token")
    print("trilm finetune (sft): the loss on " + (f"assistant tokens, through {how} of the chat template" if training_args.assistant_only_loss
                                                   else "every token (assistant_only_loss false)"), flush=True)
    if template is None:
        chats = chats.map(last_reply_as_completion, remove_columns=[c for c in ("messages",) if c in column_names(chats["train"])])
        training_args.assistant_only_loss = False
    model = load_model(model_args, family, tokenizer, AutoModelForCausalLM)
    model.generation_config.eos_token_id = chat_stops(tokenizer)
    arguments = (model_args, data_args, args, training_args)
    prompts = ending_probes(chats, questions)
    metrics = {}
    if training_args.do_train:
        metrics, _ = answer_metrics(model, tokenizer, questions, args.max_new_tokens, "_before_training")
        metrics |= ending_metrics(model, tokenizer, prompts, args.max_new_tokens, "_before_training")
    new_adapter = model_args.use_peft and not hasattr(model, "peft_config")  # an adapter folder comes with its adapter
    peft_config = lora_config(model, model_args, "CAUSAL_LM") if new_adapter else None
    record_arguments(arguments)
    tokenizer.chat_template = template or shipped
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=chats["train"],
        eval_dataset=chats.get("validation"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    tokenizer.chat_template = shipped  # the data is tokenized: the saved tokenizer keeps the checkpoint's template
    show_progress(trainer, "finetune sft")
    if training_args.do_train:
        metrics |= final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
    if "validation" in chats and training_args.do_eval:
        metrics |= final_metrics(None, trainer.evaluate(), None)
    after, rows = answer_metrics(trainer.model, tokenizer, questions, args.max_new_tokens)
    metrics |= after | ending_metrics(trainer.model, tokenizer, prompts, args.max_new_tokens)
    finish(trainer, tokenizer, "finetune", arguments, metrics, rows, start)
    return trainer, metrics
