"""trilm.modeling: the shared building blocks, the model families and their interop with transformers.

Importing this package registers every config and model class with transformers' Auto classes, and gives
PEFT default LoRA targets for each model type, so `LoraConfig()` needs no `target_modules`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from trilm.configuration import TrilmDecoderConfig

from .decoder import (
    TrilmDecoderForCausalLM,
    TrilmDecoderForSequenceClassification,
    TrilmDecoderModel,
    TrilmDecoderPreTrainedModel,
)

# model_type -> (config class, {Auto class: model class})
_REGISTRY = {
    "trilm_decoder": (
        TrilmDecoderConfig,
        {
            AutoModel: TrilmDecoderModel,
            AutoModelForCausalLM: TrilmDecoderForCausalLM,
            AutoModelForSequenceClassification: TrilmDecoderForSequenceClassification,
        },
    ),
}

# The modules PEFT wraps by default, as for Llama.
LORA_TARGET_MODULES = {"trilm_decoder": ["q_proj", "v_proj"]}


def _register() -> None:
    for model_type, (config_class, models) in _REGISTRY.items():
        AutoConfig.register(model_type, config_class, exist_ok=True)
        for auto_class, model_class in models.items():
            auto_class.register(config_class, model_class, exist_ok=True)
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    except ImportError:  # PEFT is optional at import time
        return
    for model_type, targets in LORA_TARGET_MODULES.items():
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault(model_type, list(targets))


_register()

__all__ = [
    "LORA_TARGET_MODULES",
    "TrilmDecoderConfig",
    "TrilmDecoderForCausalLM",
    "TrilmDecoderForSequenceClassification",
    "TrilmDecoderModel",
    "TrilmDecoderPreTrainedModel",
]
