"""`trilm dpo`: direct preference optimisation on TRL's `DPOTrainer`, on the preference formats of
`trilm reward` (`common/preferences.py`).

    trilm dpo --model_name_or_path runs/sft [--key value ...]          # built-in corpus pairs
    trilm dpo --config dpo-hh.yaml --model_name_or_path runs/sft        # HH-RLHF as published

The reference is the starting model: with LoRA (the default from a checkpoint) the same weights with the
adapter disabled, in full training a frozen copy TRL loads from `model_name_or_path` (an SFT adapter folder is
merged into its base first, so the SFT model is the reference). Metric: TRL's held-out reward accuracy and
margins, and greedy answer accuracy on held-out questions before and after, where answers can be checked.
"""

from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from .common.answers import answer_metrics, held_out_questions
from .common.args import launch_defaults, parse_args
from .common.chat import turn_texts
from .common.data import DataArguments, load_raw_datasets
from .common.lora import LoraModelArguments, check_adapter_options, load_merged, lora_config
from .common.models import check_family, load_tokenizer, resolve_family
from .common.output import TuningArguments, final_metrics, finish, record_arguments, show_progress
from .common.preferences import check_max_length, check_reference, preference_dataset
from .common.runtime import start_run


def run(model_args: LoraModelArguments, data_args: DataArguments, args: TuningArguments, training_args: DPOConfig):
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    check_family("trilm dpo", ("decoder",), family)
    check_adapter_options(args.merge, model_args, training_args)
    check_reference(model_args, training_args.beta)
    raw = load_raw_datasets(data_args, "preferences")
    pairs = preference_dataset(raw)
    questions = held_out_questions(data_args, raw)
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(pairs["train"], ("prompt", "chosen", "rejected")))
    model = load_merged(model_args, family, tokenizer, AutoModelForCausalLM)
    training_args.max_length = check_max_length(training_args.max_length, model.config)
    metrics = {}
    if training_args.do_train:
        metrics, _ = answer_metrics(model, tokenizer, questions, args.max_new_tokens, "_before_training")
    peft_config = lora_config(model, model_args, "CAUSAL_LM") if model_args.use_peft else None
    arguments = (model_args, data_args, args, training_args)
    record_arguments(arguments)
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=pairs["train"],
        eval_dataset=pairs.get("validation"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    show_progress(trainer, "dpo")
    if training_args.do_train:
        metrics |= final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
    if trainer.eval_dataset is not None:
        metrics |= trainer.evaluate()
    after, rows = answer_metrics(trainer.model, tokenizer, questions, args.max_new_tokens)
    metrics |= after
    finish(trainer, tokenizer, "dpo", arguments, metrics, rows, start)
    return trainer, metrics


ARGUMENT_TYPES = (LoraModelArguments, DataArguments, TuningArguments, DPOConfig)


def parse(argv: list[str]) -> tuple:
    return parse_args(ARGUMENT_TYPES, argv, "trilm dpo", {**launch_defaults(), "do_train": True, "max_length": None, "output_dir": "runs/dpo"})


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
