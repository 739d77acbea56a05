"""The output folder every recipe writes (DESIGN.md): model and tokenizer (safetensors), `trilm_args.yaml`
(every resolved argument, enough to run it again), `metrics.json`, `loss.png` and a model card `README.md`.
Only the main process writes."""

import dataclasses
import enum
import json
import math
from pathlib import Path

import yaml


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


def write_arguments(output_dir: str, *arguments) -> None:
    path = Path(output_dir) / "trilm_args.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in resolved_arguments(*arguments).items() if v is not None}
    path.write_text(yaml.safe_dump(values, sort_keys=True, allow_unicode=True))


def loss_curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(row["step"], row["loss"]) for row in log_history if "loss" in row]
    evaluation = [(row["step"], row["eval_loss"]) for row in log_history if "eval_loss" in row]
    return train, evaluation


def plot_loss(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evaluation = loss_curves(log_history)
    figure, axes = plt.subplots(figsize=(6, 4))
    for points, label, style in ((train, "train loss", "-"), (evaluation, "eval loss", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def final_metrics(train_output, eval_metrics: dict, tokens_per_sample: int | None) -> dict:
    """Trainer's train_* (`train_output` None when not training) and eval_* figures, with eval_perplexity
    and tokens per second added."""
    metrics = {**(train_output.metrics if train_output is not None else {}), **eval_metrics}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 700))
    if tokens_per_sample and "train_samples_per_second" in metrics:
        metrics["train_tokens_per_second"] = metrics["train_samples_per_second"] * tokens_per_sample
    return metrics


def model_card(model, recipe: str, metrics: dict, data: str) -> str:
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        "---",
        yaml.safe_dump({"library_name": "transformers", "tags": ["trilm", config.model_type, recipe]}, sort_keys=False).strip(),
        "---",
        "",
        f"# {type(model).__name__} trained by `trilm {recipe}`",
        "",
        f"- parameters: {parameters:,}",
        f"- architecture: {config.model_type}, hidden size {config.hidden_size}, "
        f"{getattr(config, 'num_hidden_layers', '?')} layers, {config.num_attention_heads} heads "
        f"({config.num_key_value_heads} key/value), {config.position_embedding_type} positions",
        f"- data: {data}",
        "",
        "## Evaluation",
        "",
        *[f"- {name}: {value:.4g}" for name, value in metrics.items() if name.startswith("eval_") and isinstance(value, (int, float))],
        "",
        "## Use",
        "",
        "```python",
        "import trilm.modeling  # or pass trust_remote_code=True where trilm is not installed",
        "from transformers import AutoModel, AutoTokenizer",
        'model = AutoModel.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "Training loss: `loss.png`. Every argument of the run: `trilm_args.yaml` "
        f"(run it again with `trilm {recipe} --config trilm_args.yaml`).",
        "",
    ]
    return "\n".join(lines)


def save_run(trainer, tokenizer, recipe: str, arguments: tuple, metrics: dict, data: str) -> None:
    """Write the output folder of a finished run (main process only)."""
    if not trainer.is_world_process_zero():
        return
    output_dir = Path(trainer.args.output_dir)
    trainer.save_model(str(output_dir))
    # Trainer pickles its arguments beside the weights; the folder keeps them as YAML instead (nothing to unpickle).
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(output_dir)
    write_arguments(str(output_dir), *arguments)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    plot_loss(trainer.state.log_history, output_dir / "loss.png", f"trilm {recipe}")
    model = trainer.accelerator.unwrap_model(trainer.model)
    (output_dir / "README.md").write_text(model_card(model, recipe, metrics, data))


def write_predictions(output_dir: str, rows: list[dict]) -> None:
    """`predictions.jsonl`: one JSON object per evaluated example (input, reference, prediction)."""
    lines = (json.dumps(row, ensure_ascii=False, default=_plain_number) + "\n" for row in rows)
    (Path(output_dir) / "predictions.jsonl").write_text("".join(lines), encoding="utf-8")


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
