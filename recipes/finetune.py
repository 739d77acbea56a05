"""`trilm finetune`: adapt a model to a task with PEFT/LoRA (or in full), measured by the task's metric.

    trilm finetune --config recipes/configs/finetune-sst2.yaml [--key value ...]
    trilm finetune --config ... --model_name_or_path out/run --do_train false   # evaluate a checkpoint

`task:` is one of `sequence-classification`, `token-classification`, `question-answering` (on `Trainer`),
`seq2seq` (on `Seq2SeqTrainer` with `predict_with_generate`) and `sft` (TRL's `SFTTrainer`, `recipes/sft.py`).
Each task module owns only its data mapping, collator and metric (`recipes/classification.py`,
`recipes/extractive_qa.py`, `recipes/translation.py`); this file is the recipe they share:
parse -> load data -> tokenizer -> task features -> model (+ LoRA) -> train -> evaluate and predict -> write
the output folder (`recipes/output.py`: adapter or model, predictions.jsonl, merged/ with `--merge true`).
"""

import time
from dataclasses import dataclass, field

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from trl import ModelConfig, SFTConfig
from trl.trainer.utils import get_peft_config

from .args import launch_defaults, parse_args, peek_option
from .data import DataArguments
from .models import ModelArguments, load_model, load_tokenizer, max_positions, resolve_family
from .output import final_metrics, save_merged, save_run, write_arguments, write_predictions
from .runtime import start_run


@dataclass
class FinetuneModelArguments(ModelArguments, ModelConfig):
    """trilm's model arguments plus TRL's `ModelConfig` (LoRA: use_peft, lora_r, lora_alpha, lora_dropout,
    lora_target_modules, lora_modules_to_save, load_in_4bit, ...). LoRA is the default for a pretrained
    model; a new model (`family` + `model:`) trains in full."""

    use_peft: bool | None = field(default=None, metadata={"help": "LoRA (default when starting from model_name_or_path)"})
    lora_task_type: str | None = field(default=None, metadata={"help": "PEFT task type (default: the task's)"})

    def __post_init__(self):
        ModelConfig.__post_init__(self)
        ModelArguments.__post_init__(self)
        # TRL turns a one-item list into a string, which PEFT reads as a regular expression matching whole names.
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            self.lora_target_modules = [self.lora_target_modules]
        if self.use_peft is None:
            self.use_peft = self.model_name_or_path is not None
        if self.use_peft and self.model_name_or_path is None:
            raise ValueError("LoRA adapts a pretrained model: give model_name_or_path, or set use_peft false to train a new model in full.")
        if self.quantized:
            if not self.use_peft:
                raise ValueError("load_in_4bit / load_in_8bit (QLoRA) freeze the quantized weights: train LoRA adapters on them (use_peft true).")
            if not torch.cuda.is_available():
                raise ValueError("load_in_4bit / load_in_8bit (QLoRA, bitsandbytes) need a CUDA GPU; none is available.")

    @property
    def quantized(self) -> bool:
        """QLoRA: the model's linear layers load in 4 or 8 bits."""
        return bool(self.load_in_4bit or self.load_in_8bit)


@dataclass
class FinetuneArguments:
    task: str = field(default=None, metadata={"help": "sequence-classification, token-classification, question-answering, sft, seq2seq"})
    text_pair_column_name: str | None = field(default=None, metadata={"help": "sequence-classification: the second sentence of pairs"})
    max_seq_length: int | None = field(default=None, metadata={"help": "tokens per input (default: the model's maximum, at most 512)"})
    question_column_name: str = field(default="question", metadata={"help": "question-answering: the question column"})
    context_column_name: str = field(default="context", metadata={"help": "question-answering: the context column"})
    answer_column_name: str = field(default="answers", metadata={"help": "question-answering: {text: [...], answer_start: [...]}"})
    doc_stride: int = field(default=128, metadata={"help": "question-answering: overlap of the windows a long context is split into"})
    version_2_with_negative: bool = field(default=False, metadata={"help": "question-answering: some questions have no answer (SQuAD v2)"})
    n_best_size: int = field(default=20, metadata={"help": "question-answering: start and end candidates per window"})
    max_answer_length: int = field(default=30, metadata={"help": "question-answering: longest answer, in tokens"})
    null_score_diff_threshold: float = field(default=0.0, metadata={"help": "question-answering v2: answer nothing above this margin"})
    source_lang: str | None = field(default=None, metadata={"help": "seq2seq: source language key of {'translation': {...}} rows, or column"})
    target_lang: str | None = field(default=None, metadata={"help": "seq2seq: target language key, or column"})
    source_column_name: str | None = field(default=None, metadata={"help": "seq2seq: the source column (default: source_lang, or 'source')"})
    target_column_name: str | None = field(default=None, metadata={"help": "seq2seq: the target column (default: target_lang, or 'target')"})
    source_prefix: str = field(default="", metadata={"help": "seq2seq: text put before every source (T5-style task prefix)"})
    max_target_length: int | None = field(default=None, metadata={"help": "seq2seq: tokens per target (default max_seq_length)"})
    max_new_tokens: int = field(default=32, metadata={"help": "sft: tokens generated per held-out question"})
    merge: bool = field(default=False, metadata={"help": "LoRA: also write a merged plain checkpoint to output_dir/merged"})
    tune_cpu_allocator: bool = field(default=True, metadata={"help": "on CPU, keep freed memory in the heap (~20%% faster steps)"})

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ValueError(f"task={self.task!r} does not exist: use one of {', '.join(TASK_NAMES)}.")


TASK_NAMES = ("sequence-classification", "token-classification", "question-answering", "seq2seq", "sft")


def task_module(name: str):
    from . import classification, extractive_qa, sft, translation

    return {
        "sequence-classification": classification.SEQUENCE,
        "token-classification": classification.TOKENS,
        "question-answering": extractive_qa.TASK,
        "seq2seq": translation.TASK,
        "sft": sft,
    }[name]


def check_family(task_name: str, families: tuple[str, ...], family: str) -> None:
    if family not in families:
        raise ValueError(f"task={task_name} takes a model of family {' or '.join(families)}; a {family} model has no head for it.")


def check_lora_targets(model, targets) -> None:
    """A ValueError naming the LoRA targets (PEFT's suffix match) that match no module of `model`."""
    if not isinstance(targets, (list, tuple)):
        return  # None (the model type's defaults), "all-linear", or a regular expression: PEFT checks those
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if unmatched:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora_target_modules {', '.join(unmatched)} match no module of the model; its linear layers are {', '.join(linear)}.")


def check_adapter_options(merge: bool, model_args: FinetuneModelArguments, training_args) -> None:
    """ValueErrors before training: `--merge true` needs a LoRA run on full-precision weights, and QLoRA bf16
    autocast (TRL keeps the adapters of a quantized model in bfloat16)."""
    if model_args.quantized and not training_args.bf16:
        raise ValueError("load_in_4bit / load_in_8bit: TRL keeps the LoRA adapters of a quantized model in bfloat16; set bf16 true.")
    if merge and not model_args.use_peft:
        raise ValueError("--merge true merges a LoRA adapter into its base; this run trains the model in full (use_peft false).")
    if merge and model_args.quantized:
        raise ValueError(
            "--merge true would merge the adapter into quantized weights, rounding it away. Train without --merge, then merge "
            "on the full-precision base: AutoPeftModelForCausalLM.from_pretrained(output_dir).merge_and_unload().save_pretrained(...)."
        )


def add_lora(model, model_args: FinetuneModelArguments, peft_task_type: str):
    """`model` wrapped by PEFT from TRL's `ModelConfig` names; the task's new head (if any) trains in full."""
    from peft import get_peft_model

    heads = [name for name in ("classifier", "score", "qa_outputs") if hasattr(model, name)]
    check_lora_targets(model, model_args.lora_target_modules)
    model_args.lora_task_type = model_args.lora_task_type or peft_task_type
    model_args.lora_modules_to_save = model_args.lora_modules_to_save or heads or None
    return get_peft_model(model, get_peft_config(model_args))


def run(model_args: FinetuneModelArguments, data_args: DataArguments, args: FinetuneArguments, training_args: TrainingArguments):
    check_adapter_options(args.merge, model_args, training_args)
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    task = task_module(args.task)
    family = resolve_family(model_args)
    check_family(args.task, task.families, family)
    if args.task == "sft":
        return task.run(model_args, data_args, args, training_args, family, start)
    raw = task.load_data(data_args, args)
    tokenizer = load_tokenizer(model_args, family, texts=task.texts(raw, data_args, args))
    max_length = args.max_seq_length or min(max_positions(model_args, family), 512)
    features = task.prepare(raw, tokenizer, data_args, args, training_args, max_length)
    model = load_model(model_args, family, tokenizer, task.auto_class, **features.config)
    if model_args.use_peft and not hasattr(model, "peft_config"):  # an adapter folder comes with its adapter
        model = add_lora(model, model_args, task.peft_task_type)
    if hasattr(features.collator, "model"):
        features.collator.model = model  # DataCollatorForSeq2Seq: decoder inputs from the labels (label smoothing pops them)
    arguments = (model_args, data_args, args, training_args)
    if training_args.process_index == 0:
        write_arguments(training_args.output_dir, *arguments)
    trainer_class = Seq2SeqTrainer if isinstance(training_args, Seq2SeqTrainingArguments) else Trainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=features.train,
        eval_dataset=features.eval,
        data_collator=features.collator,
        processing_class=tokenizer,
        compute_metrics=features.compute_metrics,
        preprocess_logits_for_metrics=features.preprocess_logits,
    )
    metrics, rows = {}, []
    if training_args.do_train:
        train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = final_metrics(train_output, {}, None)
    if features.eval is not None and training_args.do_eval:
        predicted = trainer.predict(features.eval, metric_key_prefix="eval")
        metrics.update(predicted.metrics)
        rows = features.predictions(predicted)
    finish(trainer, tokenizer, arguments, metrics, rows, start)
    return trainer, metrics


def finish(trainer, tokenizer, arguments: tuple, metrics: dict, rows: list[dict], start: float, recipe: str = "finetune") -> None:
    """Write the output folder of a fine-tuning (or alignment) run: model or adapter, `predictions.jsonl`,
    and `merged/` with `--merge true` (main process only)."""
    _, data_args, args, _ = arguments
    metrics["wall_time"] = time.perf_counter() - start
    save_run(trainer, tokenizer, recipe, arguments, metrics, data_args.description())
    if rows and trainer.is_world_process_zero():
        write_predictions(trainer.args.output_dir, rows)
    if args.merge:
        save_merged(trainer, tokenizer)


def argument_types(task: str) -> tuple[type, ...]:
    trainer_arguments = {"seq2seq": Seq2SeqTrainingArguments, "sft": SFTConfig}.get(task, TrainingArguments)
    return FinetuneModelArguments, DataArguments, FinetuneArguments, trainer_arguments


def parse(argv: list[str]) -> tuple:
    """(model, data, finetune, trainer) arguments of a `trilm finetune` command line, the trainer's class
    chosen by `task`; training and evaluation on unless the flags say otherwise."""
    task = peek_option(argv, "task")
    if task not in TASK_NAMES:
        raise ValueError(f"task={task!r} does not exist: give --task (or task: in the YAML) as one of {', '.join(TASK_NAMES)}.")
    defaults = {**launch_defaults(), "do_train": True, "do_eval": True}
    if task == "seq2seq":
        defaults["predict_with_generate"] = True
    if task == "sft":
        defaults["assistant_only_loss"] = True  # conversations: the loss on assistant turns only (prompt/completion: completions)
    return parse_args(argument_types(task), argv, "trilm finetune", defaults)


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
