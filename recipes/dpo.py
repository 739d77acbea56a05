"""`trilm dpo`: direct preference optimisation on TRL's `DPOTrainer`, on the preference formats of
`trilm reward` (`recipes/alignment.py`).

    trilm dpo --model_name_or_path runs/sft [--key value ...]          # built-in corpus pairs
    trilm dpo --config dpo-hh.yaml --model_name_or_path runs/sft        # HH-RLHF as published

The reference is the starting model: with LoRA (the default from a checkpoint) the same weights with the
adapter disabled, in full training a frozen copy TRL loads from `model_name_or_path` (an SFT adapter folder is
merged into its base first, so the SFT model is the reference). Metric: TRL's held-out reward accuracy and
margins, and greedy answer accuracy on held-out questions before and after, where answers can be checked.
"""

from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from .alignment import AlignmentArguments, check_max_length, check_reference, load_merged, preference_dataset
from .args import launch_defaults, parse_args
from .data import DataArguments, load_raw_datasets
from .finetune import FinetuneModelArguments, check_adapter_options, check_family, finish
from .models import load_tokenizer, resolve_family
from .output import final_metrics
from .runtime import start_run
from .sft import after_training, before_training, held_out_questions, turn_texts


def run(model_args: FinetuneModelArguments, data_args: DataArguments, args: AlignmentArguments, training_args: DPOConfig):
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    check_family("dpo", ("decoder",), family)
    check_adapter_options(args.merge, model_args, training_args)
    check_reference(model_args, training_args.beta)
    raw = load_raw_datasets(data_args, "preferences")
    pairs = preference_dataset(raw)
    questions = held_out_questions(data_args, raw)
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(pairs["train"], ("prompt", "chosen", "rejected")))
    model = load_merged(model_args, family, tokenizer, AutoModelForCausalLM)
    training_args.max_length = check_max_length(training_args.max_length, model.config)
    arguments = (model_args, data_args, args, training_args)
    metrics, peft_config = before_training(model, tokenizer, arguments, questions, model_args.use_peft)
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=pairs["train"],
        eval_dataset=pairs.get("validation"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if training_args.do_train:
        metrics |= final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
    if trainer.eval_dataset is not None:
        metrics |= trainer.evaluate()
    rows = after_training(trainer, tokenizer, questions, args.max_new_tokens, metrics)
    finish(trainer, tokenizer, arguments, metrics, rows, start, "dpo")
    return trainer, metrics


ARGUMENT_TYPES = (FinetuneModelArguments, DataArguments, AlignmentArguments, DPOConfig)


def parse(argv: list[str]) -> tuple:
    return parse_args(ARGUMENT_TYPES, argv, "trilm dpo", {**launch_defaults(), "do_train": True, "max_length": None})


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
