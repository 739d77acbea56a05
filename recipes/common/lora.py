"""Adapters: the model arguments of every recipe that tunes a checkpoint (trilm's plus TRL's `ModelConfig`
LoRA names), their checks, the PEFT config built from them, and adapter folders merged back into their base."""

import copy
from dataclasses import dataclass, field

import torch
from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from .chat import chat_stops
from .models import ModelArguments, load_model

# The heads a task adds on top of a pretrained body: they start untrained, so they train in full beside LoRA.
NEW_HEADS = ("classifier", "score", "qa_outputs")


@dataclass
class LoraModelArguments(ModelArguments, ModelConfig):
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


def check_adapter_options(merge: bool, model_args: LoraModelArguments, training_args) -> None:
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


def check_lora_targets(model, targets) -> None:
    """A ValueError naming the LoRA targets (PEFT's suffix match) that match no module of `model`."""
    if not isinstance(targets, (list, tuple)):
        return  # None (the model type's defaults), "all-linear", or a regular expression: PEFT checks those
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if unmatched:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora_target_modules {', '.join(unmatched)} match no module of the model; its linear layers are {', '.join(linear)}.")


def lora_config(model, model_args: LoraModelArguments, task_type: str):
    """PEFT's `LoraConfig` from TRL's names, for `model`: the targets checked, the task type given unless the
    arguments name one, and a new task head trained in full beside the adapters. The parsed arguments stay as
    they were (`trilm_args.yaml` records what the user asked for)."""
    check_lora_targets(model, model_args.lora_target_modules)
    resolved = copy.copy(model_args)
    resolved.lora_task_type = model_args.lora_task_type or task_type
    resolved.lora_modules_to_save = model_args.lora_modules_to_save or [name for name in NEW_HEADS if hasattr(model, name)] or None
    return get_peft_config(resolved)


def add_lora(model, model_args: LoraModelArguments, task_type: str):
    """`model` wrapped by PEFT (for Trainer; TRL's trainers take `lora_config` and wrap it themselves)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, model_args, task_type))


# An adapter folder (a LoRA SFT run) is merged into its base first, so that the SFT model, not the base, is
# what reward modelling, RL or DPO starts from and, with a new LoRA adapter, the adapter-disabled reference.
def load_merged(model_args: ModelArguments, family: str, tokenizer, auto_class, **config_fields):
    """The model of `model_name_or_path` (or a new one), an adapter folder merged into its base; a generative
    model stops at the chat template's end of turn."""
    model = load_model(model_args, family, tokenizer, auto_class, **config_fields)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    if model.can_generate():
        model.generation_config.eos_token_id = chat_stops(tokenizer)
    return model
