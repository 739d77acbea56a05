"""The output folder every recipe writes (DESIGN.md): model and tokenizer (safetensors), `trilm_args.yaml`
(every resolved argument, enough to run it again), `metrics.json`, `loss.png` and a model card `README.md`.
Only the main process writes."""

import dataclasses
import enum
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback

from .models import FAMILY_OF_MODEL_TYPE
from .runtime import RunArguments, hardware_record


@dataclass
class TuningArguments(RunArguments):
    """What every recipe that tunes a model takes (`finetune`, `reward`, `dpo`, `rlhf`)."""

    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per held-out question (answer accuracy)"})
    merge: bool = field(default=False, metadata={"help": "LoRA: also write a merged plain checkpoint to output_dir/merged"})


def resolved_arguments(*arguments) -> dict:
    """One flat mapping of every field of the parsed argument dataclasses, as `--config` reads it back."""
    values = {}
    for args in arguments:
        items = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        init_fields = {f.name for f in dataclasses.fields(args) if f.init}
        values.update({k: _plain(v) for k, v in items.items() if k in init_fields})
    return values


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_hardware(*arguments) -> dict:
    """The precision the run used and why, the CPU capability and the thread count (`runtime.hardware_record`)."""
    training = next((args for args in arguments if hasattr(args, "bf16")), None)
    if training is None:
        return {}
    return hardware_record(training.bf16, getattr(training, "bf16_reason", None))


def record_arguments(arguments: tuple) -> None:
    """`trilm_args.yaml` in the output folder before training starts (main process), so that an interrupted
    run can be run again, and the folder named on the terminal; `arguments` end with the trainer's."""
    if arguments[-1].process_index == 0:
        write_arguments(arguments[-1].output_dir, *arguments)
        print(f"trilm: this run writes {arguments[-1].output_dir}", flush=True)


# ------------------------------------------------------------------------------------------ progress
class RunProgress(TrainerCallback):
    """What a run shows while it trains: Trainer's progress bar named for the stage, with the loss as it is
    logged instead of a printed dict per log, and evaluation results as one line. A short run logs about ten
    times: where `logging_steps` is left at Trainer's default (500) and the run is shorter than ten times that."""

    TRAINER_DEFAULT_LOGGING_STEPS = 500

    def __init__(self, title: str, bar: bool = True):
        self.title, self.bar, self.training_bar = title, bar, None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_strategy == "steps" and args.logging_steps == self.TRAINER_DEFAULT_LOGGING_STEPS:
            state.logging_steps = max(1, min(state.logging_steps, state.max_steps // 10))
        if self.bar and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.training_bar = tqdm(total=state.max_steps, desc=self.title, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self.training_bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs:
            return
        shown = {key: value for key, value in logs.items() if key in ("loss", "eval_loss", "reward", "objective/scores", "learning_rate")}
        if shown:
            self.training_bar.set_postfix({key: f"{value:.4g}" for key, value in shown.items()}, refresh=False)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.training_bar is not None and metrics:
            figures = "  ".join(f"{key} {value:.4g}" for key, value in headline(metrics).items())
            self.training_bar.write(f"{self.title} step {state.global_step}: {figures}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


def show_progress(trainer, title: str):
    """`trainer` with `RunProgress` instead of Trainer's own progress bar (or, with `disable_tqdm`, beside its
    printed logs); returns the trainer."""
    from transformers.trainer_callback import ProgressCallback

    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RunProgress(title, bar=not trainer.args.disable_tqdm))
    return trainer


# The figures a run is judged by, first where a run has them.
HEADLINE = ("eval_reward_accuracy", "eval_rewards/accuracies", "eval_answer_accuracy", "eval_answer_accuracy_before_training",
            "eval_reward", "eval_reward_before_training", "eval_replies_ended", "eval_replies_ended_before_training",
            "eval_accuracy", "eval_f1", "eval_exact_match", "eval_bleu", "eval_rougeL", "eval_loss")


def headline(metrics: dict, count: int = 4) -> dict:
    """The run's headline figures: its eval_* metrics (timings left out), at most `count`, those of HEADLINE first."""
    scores = {key: value for key, value in metrics.items() if key.startswith("eval_") and isinstance(value, (int, float))
              and not key.endswith(("_runtime", "_per_second")) and key not in ("eval_epoch", "eval_perplexity")}
    ordered = sorted(scores, key=lambda key: (HEADLINE.index(key) if key in HEADLINE else len(HEADLINE), key))
    return {key: scores[key] for key in ordered[:count]}


def next_step(recipe: str, family: str, output_dir: str, task: str | None) -> str:
    """The command a user is likely to run next on this folder."""
    if family == "decoder" and (recipe in ("dpo", "rlhf") or task == "sft"):
        return f"trilm generate --model_name_or_path {output_dir} --chat true"
    if recipe == "reward":
        return f"trilm rlhf --model_name_or_path <the SFT run> --reward_model_name_or_path {output_dir}"
    if recipe == "pretrain":
        return {"decoder": f"trilm generate --model_name_or_path {output_dir} --prompt \"...\"  (or trilm finetune --task sft ...)",
                "encoder": f"trilm finetune --task sequence-classification --model_name_or_path {output_dir} ...",
                "seq2seq": f"trilm finetune --task seq2seq --model_name_or_path {output_dir} ..."}[family]
    return f"trilm push --output_dir {output_dir} --repo_id you/{Path(output_dir).name}  (or trilm export ...)"


def print_summary(recipe: str, model, output_dir: Path, metrics: dict, task: str | None) -> None:
    """The block a run ends with: where it saved, its headline figures, and the next step."""
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    family = FAMILY_OF_MODEL_TYPE.get(config.model_type, config.model_type)
    figures = {**({"train_loss": metrics["train_loss"]} if "train_loss" in metrics else {}), **headline(metrics)}
    took = f" in {metrics['wall_time']:.0f} s" if "wall_time" in metrics else ""
    print(f"\ntrilm {recipe}{f' ({task})' if task else ''}: done{took}, saved in {output_dir}")
    if figures:
        print("  " + "  ".join(f"{key} {value:.4g}" for key, value in figures.items()))
    print(f"  next: {next_step(recipe, family, str(output_dir), task)}", flush=True)


def write_arguments(output_dir: str, *arguments) -> None:
    """`trilm_args.yaml`: every resolved argument (`trilm <command> --config` reads it back), headed by comments
    that say on which hardware, in which precision and why, the run ran."""
    path = Path(output_dir) / "trilm_args.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in resolved_arguments(*arguments).items() if v is not None}
    header = "".join(f"# {key}: {value}\n" for key, value in run_hardware(*arguments).items())
    path.write_text(header + yaml.safe_dump(values, sort_keys=True, allow_unicode=True))


def loss_curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) loss points by step; a run that logged no training loss gets its final average, so that a
    plot is never empty."""
    train = [(row["step"], row["loss"]) for row in log_history if "loss" in row]
    if not train:
        train = [(row["step"], row["train_loss"]) for row in log_history if "train_loss" in row]
    evaluation = [(row["step"], row["eval_loss"]) for row in log_history if "eval_loss" in row]
    return train, evaluation


# What the loss of each recipe (and finetune task) measures, for the plot's axis.
LOSS_UNITS = {
    "pretrain": "nats per token", "sft": "nats per token", "seq2seq": "nats per token",
    "sequence-classification": "cross-entropy per example", "token-classification": "cross-entropy per token",
    "question-answering": "mean of start and end cross-entropy", "reward": "-log sigmoid(chosen - rejected)",
    "dpo": "DPO loss, -log sigmoid(beta x margin)", "rlhf": "policy loss",
}


def plot_loss(log_history: list[dict], path: Path, title: str, unit: str = "nats per token") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evaluation = loss_curves(log_history)
    figure, axes = plt.subplots(figsize=(6, 4))
    for points, label, style in ((train, "train loss", "o-" if len(train) < 3 else "-"), (evaluation, "eval loss", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel(f"loss ({unit})")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if train or evaluation:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def last_evaluation(trainer) -> dict:
    """The evaluation of the trained model: the one Trainer ran at the last step (eval_steps dividing the
    steps), else a new one. Evaluating the same weights on the same data again would only repeat it."""
    at_end = [row for row in trainer.state.log_history if "eval_loss" in row and row.get("step") == trainer.state.global_step]
    return {key: value for key, value in at_end[-1].items() if key != "step"} if at_end else trainer.evaluate()


def final_metrics(train_output, eval_metrics: dict, tokens_per_sample: int | None) -> dict:
    """Trainer's train_* (`train_output` None when not training) and eval_* figures, with eval_perplexity
    and tokens per second added. TRL's trainers put their last logged training figures (`accuracy`,
    `margin`, `mean_token_accuracy`, ...) in the training output unprefixed: they get `train_`, so that
    a training accuracy cannot pass for a held-out one."""
    trained = train_output.metrics if train_output is not None else {}
    trained = {key if key.startswith("train_") or key in ("epoch", "total_flos") else f"train_{key}": value for key, value in trained.items()}
    metrics = {**trained, **eval_metrics}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 700))
    if tokens_per_sample and "train_samples_per_second" in metrics:
        metrics["train_tokens_per_second"] = metrics["train_samples_per_second"] * tokens_per_sample
    return metrics


PIPELINE_TAGS = {  # model class name suffix -> the Hub's pipeline tag
    "ForCausalLM": "text-generation",
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForConditionalGeneration": "text2text-generation",
}


def eval_scores(metrics: dict) -> dict[str, float]:
    """The run's evaluation figures for the card (eval_* without the prefix; timings left out)."""
    return {key.removeprefix("eval_"): float(value) for key, value in sorted(metrics.items())
            if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(("_runtime", "_per_second"))}


def card_metadata(base, adapter: bool, recipe: str, scores: dict[str, float], values: dict) -> dict:
    """The card's YAML header: library, pipeline tag, tags (trilm, family, recipe, task, peft), license
    (where the run names one), datasets, base model and a model-index of the run's eval `scores`. `base` is the model (without a PEFT wrapper),
    `values` the run's resolved arguments."""
    config = base.config
    name = type(base).__name__
    pipeline_tag = next((tag for suffix, tag in PIPELINE_TAGS.items() if name.endswith(suffix)), None)
    task = values.get("task") or ("reward-modeling" if recipe == "reward" else None)
    tags = ["trilm", FAMILY_OF_MODEL_TYPE.get(config.model_type, config.model_type), recipe, *([task] if task else [])]
    if adapter:
        tags += ["peft", "lora"]
    metadata = {"library_name": "transformers", "pipeline_tag": pipeline_tag, "tags": tags, "license": values.get("license")}
    if values.get("dataset_name"):
        metadata["datasets"] = [values["dataset_name"]]
    if values.get("model_name_or_path"):
        metadata["base_model"] = values["model_name_or_path"]
    if scores:
        dataset = values.get("dataset_name") or values.get("train_file") or "trilm built-in corpus"
        metrics = [{"type": name, "value": round(value, 6)} for name, value in scores.items()]
        metadata["model-index"] = [{
            "name": Path(values.get("output_dir", "model")).name,
            "results": [{"task": {"type": pipeline_tag or recipe}, "dataset": {"name": str(dataset), "type": str(dataset)}, "metrics": metrics}],
        }]
    return {key: value for key, value in metadata.items() if value is not None}


def model_card(model, recipe: str, metrics: dict, data: str, arguments: tuple = ()) -> str:
    """A `README.md` model card filled from the run: metadata, architecture, data, recipe arguments,
    evaluation, loss curve, and how to load it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    adapter = hasattr(model, "peft_config")
    values, scores = resolved_arguments(*arguments), eval_scores(metrics)
    metadata = card_metadata(base, adapter, recipe, scores, values)
    config = base.config
    parameters = sum(p.numel() for p in base.parameters())
    auto_class = {"text-generation": "AutoModelForCausalLM", "fill-mask": "AutoModelForMaskedLM",
                  "text2text-generation": "AutoModelForSeq2SeqLM", "text-classification": "AutoModelForSequenceClassification",
                  "token-classification": "AutoModelForTokenClassification", "question-answering": "AutoModelForQuestionAnswering"}
    loader = auto_class.get(metadata.get("pipeline_tag"), "AutoModel")
    layers = getattr(config, "num_hidden_layers", None) or f"{config.encoder_layers}+{config.decoder_layers}"
    training = {key: values[key] for key in ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                                             "gradient_accumulation_steps", "lr_scheduler_type", "bf16", "seed", "use_peft", "lora_r")
                if values.get(key) not in (None, -1)}
    load = (
        [f"from peft import AutoPeftModel{loader.removeprefix('AutoModel')}", f'model = AutoPeftModel{loader.removeprefix("AutoModel")}.from_pretrained("path/to/this/folder")']
        if adapter else [f"from transformers import {loader}", f'model = {loader}.from_pretrained("path/to/this/folder")']
    )
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {type(base).__name__} trained by `trilm {recipe}`" + (" (LoRA adapter)" if adapter else ""),
        "",
        "## Model",
        "",
        f"- parameters: {parameters:,}" + (f" (base; this folder holds a LoRA adapter on `{metadata.get('base_model')}`)" if adapter else ""),
        f"- architecture: {config.model_type}, hidden size {config.hidden_size}, {layers} layers, "
        f"{config.num_attention_heads} heads ({config.num_key_value_heads} key/value), {config.position_embedding_type} positions, "
        f"vocabulary {config.vocab_size}, attention `{config._attn_implementation}`",
        f"- data: {data}",
        "",
        "## Training",
        "",
        *[f"- {key}: {value}" for key, value in training.items()],
        "",
        "Every argument of the run: `trilm_args.yaml` "
        f"(run it again with `trilm {recipe} --config trilm_args.yaml`). Loss curve:",
        "",
        "![train and eval loss](loss.png)",
        "",
        "## Evaluation",
        "",
        *(["| metric | value |", "|---|---|", *(f"| {name} | {value:.4g} |" for name, value in scores.items())] if scores else ["No evaluation in this run."]),
        "",
        "## Use",
        "",
        "With trilm installed (its import registers the classes with transformers' Auto classes):",
        "",
        "```python",
        "import trilm.modeling",
        "from transformers import AutoTokenizer",
        *load,
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        *([] if adapter else [
            "Without trilm (the folder carries its code: `configuration_trilm.py`, `modeling_trilm.py`):",
            "",
            "```python",
            f"from transformers import AutoTokenizer, {loader}",
            f'model = {loader}.from_pretrained("path/to/this/folder", trust_remote_code=True)',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "```",
            "",
        ]),
    ]
    return "\n".join(lines)


def save_run(trainer, tokenizer, recipe: str, arguments: tuple, metrics: dict, data: str) -> None:
    """Write the output folder of a finished run. Every process calls it: FSDP (and ZeRO-3) gather the full
    weights together; the main process writes."""
    output_dir = Path(trainer.args.output_dir)
    if trainer.is_fsdp_enabled:  # a sharded state dict (the fsdp2 preset's, for checkpoints) would save no model
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir), _internal_call=True)  # not Trainer's push: it would upload its own generic card
    if not trainer.is_world_process_zero():
        return
    # Trainer pickles its arguments beside the weights; the folder keeps them as YAML instead (nothing to unpickle).
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(output_dir)
    write_arguments(str(output_dir), *arguments)
    metrics.update(run_hardware(*arguments))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    task = getattr(arguments[2], "task", None) if len(arguments) > 2 else None
    plot_loss(trainer.state.log_history, output_dir / "loss.png", f"trilm {recipe}" + (f" ({task})" if task else ""),
              LOSS_UNITS.get(task or recipe, "as the trainer computes it"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    (output_dir / "README.md").write_text(model_card(model, recipe, metrics, data, arguments))
    print_summary(recipe, model, output_dir, metrics, task)
    if trainer.args.push_to_hub:
        push_folder(output_dir, trainer.args.hub_model_id or output_dir.name, private=trainer.args.hub_private_repo,
                    token=trainer.args.hub_token, commit_message=f"trilm {recipe}")


def finish(trainer, tokenizer, recipe: str, arguments: tuple, metrics: dict, rows: list[dict], start: float) -> None:
    """The end of every tuning run: its wall time into `metrics`, the output folder (`save_run`),
    `predictions.jsonl` where there are predictions, and `merged/` with `--merge true`."""
    _, data_args, args, _ = arguments
    metrics["wall_time"] = time.perf_counter() - start
    save_run(trainer, tokenizer, recipe, arguments, metrics, data_args.description())
    if rows and trainer.is_world_process_zero():
        write_predictions(trainer.args.output_dir, rows)
    if args.merge:
        save_merged(trainer, tokenizer)


def write_jsonl(path: str | Path, rows) -> None:
    """`rows` as JSON lines (tensors and numpy numbers as plain numbers)."""
    lines = (json.dumps(row, ensure_ascii=False, default=_plain_number) + "\n" for row in rows)
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_predictions(output_dir: str, rows: list[dict]) -> None:
    """`predictions.jsonl`: one JSON object per evaluated example (input, reference, prediction)."""
    write_jsonl(Path(output_dir) / "predictions.jsonl", rows)


def _plain_number(value):
    return value.item() if hasattr(value, "item") else str(value)


def save_merged(trainer, tokenizer) -> Path | None:
    """With LoRA, the adapter merged into the base weights as a plain checkpoint in `output_dir/merged`,
    loadable without PEFT (main process only). Returns its path."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return None
    path = Path(trainer.args.output_dir) / "merged"
    model.merge_and_unload().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# What a run folder holds that does not go to the Hub: checkpoints (the optimizer state of every save) and
# pickles (Trainer's training_args.bin; trilm writes trilm_args.yaml instead).
NOT_PUSHED = ("checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl")


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "trilm run") -> str:
    """Upload a run folder (model or adapter, tokenizer, card, trilm_args.yaml, metrics, loss curve, merged/)
    to the Hub repository `repo_id` in one commit, creating the repository if needed. Returns its URL."""
    import fnmatch

    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ValueError(f"{folder} holds no model: push the output_dir of a finished trilm run (config.json or adapter_config.json).")
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()
             and not any(fnmatch.fnmatch(part, pattern) for part in path.relative_to(folder).parts for pattern in NOT_PUSHED)]
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path)) for path in files]
    api.create_commit(repo_id, operations, commit_message=commit_message)
    return str(url)
