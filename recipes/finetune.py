"""`trilm finetune`: adapt a model to a task with PEFT/LoRA (or in full), measured by the task's metric.

    trilm finetune --config recipes/configs/finetune-sst2.yaml [--key value ...]
    trilm finetune --config ... --model_name_or_path out/run --do_train false   # evaluate a checkpoint

`task:` is one of `sequence-classification`, `token-classification`, `question-answering` (on `Trainer`),
`seq2seq` (on `Seq2SeqTrainer` with `predict_with_generate`) and `sft` (TRL's `SFTTrainer`, `tasks/sft.py`).
Each task module of `recipes/tasks/` owns only its data mapping, collator and metric (`classification.py`,
`extractive_qa.py`, `translation.py`); this file is the recipe they share:
parse -> load data -> tokenizer -> task features -> model (+ LoRA) -> train -> evaluate and predict -> write
the output folder (`common/output.py`: adapter or model, predictions.jsonl, merged/ with `--merge true`).
"""

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from trl import SFTConfig

from .common.args import launch_defaults, parse_args, peek_option, wants_help
from .common.data import DataArguments
from .common.lora import LoraModelArguments, add_lora, check_adapter_options
from .common.models import check_family, load_model, load_tokenizer, max_positions, resolve_family
from .common.output import TuningArguments, final_metrics, finish, record_arguments, show_progress
from .common.runtime import start_run
from .tasks import classification, extractive_qa, sft, translation

# The tasks on Trainer (or Seq2SeqTrainer), each a `Task`; sft runs on TRL's SFTTrainer (`tasks/sft.py`).
TASKS = {
    "sequence-classification": classification.SEQUENCE,
    "token-classification": classification.TOKENS,
    "question-answering": extractive_qa.TASK,
    "seq2seq": translation.TASK,
}
TASK_NAMES = (*TASKS, "sft")


@dataclass
class FinetuneArguments(TuningArguments):
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

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ValueError(f"task={self.task!r} does not exist: use one of {', '.join(TASK_NAMES)}.")




def run(model_args: LoraModelArguments, data_args: DataArguments, args: FinetuneArguments, training_args: TrainingArguments):
    check_adapter_options(args.merge, model_args, training_args)
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    if args.task == "sft":
        check_family(f"task={args.task}", sft.FAMILIES, family)
        return sft.run(model_args, data_args, args, training_args, family, start)
    task = TASKS[args.task]
    check_family(f"task={args.task}", task.families, family)
    raw = task.load_data(data_args, args)
    tokenizer = load_tokenizer(model_args, family, texts=task.texts(raw, data_args, args))
    max_length = args.max_seq_length or min(max_positions(model_args, family), 512)
    # The trainer's arguments this run resolves, in one step: label_names lists a classifier's classes (then
    # Trainer reads it with its own meaning, the input keys holding labels: back to its default), and a seq2seq
    # run generates up to the target length unless generation_max_length says otherwise.
    class_names, training_args.label_names = training_args.label_names, None
    if isinstance(training_args, Seq2SeqTrainingArguments) and training_args.generation_max_length is None:
        training_args.generation_max_length = args.max_target_length or max_length
    features = task.prepare(raw, tokenizer, data_args, args, training_args, max_length, class_names)
    model = load_model(model_args, family, tokenizer, task.auto_class, **features.config)
    if model_args.use_peft and not hasattr(model, "peft_config"):  # an adapter folder comes with its adapter
        model = add_lora(model, model_args, task.peft_task_type)
    if hasattr(features.collator, "model"):
        features.collator.model = model  # DataCollatorForSeq2Seq: decoder inputs from the labels (label smoothing pops them)
    arguments = (model_args, data_args, args, training_args)
    record_arguments(arguments)
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
    show_progress(trainer, f"finetune {args.task}")
    metrics, rows = {}, []
    if training_args.do_train:
        train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = final_metrics(train_output, {}, None)
    if features.eval is not None and training_args.do_eval:
        predicted = trainer.predict(features.eval, metric_key_prefix="eval")
        metrics.update(predicted.metrics)
        rows = features.predictions(predicted)
    finish(trainer, tokenizer, "finetune", arguments, metrics, rows, start)
    return trainer, metrics


def argument_types(task: str) -> tuple[type, ...]:
    trainer_arguments = {"seq2seq": Seq2SeqTrainingArguments, "sft": SFTConfig}.get(task, TrainingArguments)
    return LoraModelArguments, DataArguments, FinetuneArguments, trainer_arguments


def parse(argv: list[str]) -> tuple:
    """(model, data, finetune, trainer) arguments of a `trilm finetune` command line, the trainer's class
    chosen by `task`; training and evaluation on unless the flags say otherwise."""
    task = peek_option(argv, "task")
    if task not in TASK_NAMES and not wants_help(argv):  # --help without a task shows TrainingArguments
        raise ValueError(f"task={task!r} does not exist: give --task (or task: in the YAML) as one of {', '.join(TASK_NAMES)}.")
    defaults = {**launch_defaults(), "do_train": True, "do_eval": True, "output_dir": f"runs/finetune-{task}"}
    if task == "seq2seq":
        defaults["predict_with_generate"] = True
    if task == "sft":
        defaults["assistant_only_loss"] = True  # conversations: the loss on assistant turns only (prompt/completion: completions)
    return parse_args(argument_types(task), argv, "trilm finetune", defaults)


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
