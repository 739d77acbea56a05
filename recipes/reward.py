"""`trilm reward`: a reward model on preference pairs, on TRL's `RewardTrainer`.

    trilm reward --model_name_or_path runs/sft [--key value ...]          # built-in corpus pairs
    trilm reward --config reward-hh.yaml --model_name_or_path runs/sft     # HH-RLHF as published

The model is the decoder's sequence-classification head (`TrilmDecoderForSequenceClassification`, one label,
the `score` head reading the last non-pad token) on a decoder checkpoint, trained in full or with LoRA.
Pairs are `prompt`/`chosen`/`rejected` rows, `chosen`/`rejected` conversations, or HH-RLHF text
(`common/preferences.py`). Metric: on the held-out pairs, the share where chosen scores above rejected
(`eval_reward_accuracy`) and the mean margin (`eval_reward_margin`).
"""

from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from .common.args import launch_defaults, parse_args
from .common.chat import turn_texts
from .common.data import DataArguments, load_raw_datasets
from .common.lora import LoraModelArguments, add_lora, check_adapter_options, load_merged
from .common.models import check_family, load_tokenizer, resolve_family
from .common.output import TuningArguments, final_metrics, finish, record_arguments, show_progress
from .common.preferences import check_max_length, check_pairs_kept, preference_dataset
from .common.rewards import pairwise_metrics
from .common.runtime import start_run


def run(model_args: LoraModelArguments, data_args: DataArguments, args: TuningArguments, training_args: RewardConfig):
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    check_family("trilm reward", ("decoder",), family)
    check_adapter_options(args.merge, model_args, training_args)
    pairs = preference_dataset(load_raw_datasets(data_args, "preferences"))
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(pairs["train"], ("prompt", "chosen", "rejected")))
    model = load_merged(model_args, family, tokenizer, AutoModelForSequenceClassification, num_labels=1)
    training_args.max_length = check_max_length(training_args.max_length, model.config)
    if model_args.use_peft:
        model = add_lora(model, model_args, "SEQ_CLS")
    arguments = (model_args, data_args, args, training_args)
    record_arguments(arguments)
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=pairs["train"],
        eval_dataset=pairs.get("validation"),
        processing_class=tokenizer,
    )
    show_progress(trainer, "reward")
    check_pairs_kept(trainer, pairs, training_args.max_length)
    metrics = {}
    if training_args.do_train:
        metrics = final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
    if trainer.eval_dataset is not None:
        metrics |= trainer.evaluate()  # TRL's batch-averaged eval_accuracy / eval_margin; below, the exact ones
        metrics |= pairwise_metrics(trainer.model, trainer.eval_dataset, tokenizer.pad_token_id)
    finish(trainer, tokenizer, "reward", arguments, metrics, [], start)
    return trainer, metrics


ARGUMENT_TYPES = (LoraModelArguments, DataArguments, TuningArguments, RewardConfig)


def parse(argv: list[str]) -> tuple:
    return parse_args(ARGUMENT_TYPES, argv, "trilm reward", {**launch_defaults(), "do_train": True, "max_length": None, "output_dir": "runs/reward"})


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
