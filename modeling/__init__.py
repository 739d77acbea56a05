"""trilm.modeling: the shared building blocks, the model families and their interop with transformers.

Importing this package registers every config and model class with transformers' Auto classes, and gives
PEFT default LoRA targets for each model type, so `LoraConfig()` needs no `target_modules`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import trilm.tokenization  # noqa: F401  (registers TrilmTokenizer with AutoTokenizer: saved folders load without prompts)
from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig

from .decoder import (
    TrilmDecoderForCausalLM,
    TrilmDecoderForSequenceClassification,
    TrilmDecoderModel,
    TrilmDecoderPreTrainedModel,
)
from .encoder import (
    TrilmEncoderForMaskedLM,
    TrilmEncoderForQuestionAnswering,
    TrilmEncoderForSequenceClassification,
    TrilmEncoderForTokenClassification,
    TrilmEncoderModel,
    TrilmEncoderPreTrainedModel,
)
from .seq2seq import (
    TrilmSeq2SeqDecoder,
    TrilmSeq2SeqEncoder,
    TrilmSeq2SeqForConditionalGeneration,
    TrilmSeq2SeqModel,
    TrilmSeq2SeqPreTrainedModel,
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
    "trilm_encoder": (
        TrilmEncoderConfig,
        {
            AutoModel: TrilmEncoderModel,
            AutoModelForMaskedLM: TrilmEncoderForMaskedLM,
            AutoModelForSequenceClassification: TrilmEncoderForSequenceClassification,
            AutoModelForTokenClassification: TrilmEncoderForTokenClassification,
            AutoModelForQuestionAnswering: TrilmEncoderForQuestionAnswering,
        },
    ),
    "trilm_seq2seq": (
        TrilmSeq2SeqConfig,
        {AutoModel: TrilmSeq2SeqModel, AutoModelForSeq2SeqLM: TrilmSeq2SeqForConditionalGeneration},
    ),
}

# The modules PEFT wraps by default, as for Llama, BERT (query/value) and BART (q_proj/v_proj).
LORA_TARGET_MODULES = {model_type: ["q_proj", "v_proj"] for model_type in _REGISTRY}


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
    "TrilmEncoderConfig",
    "TrilmEncoderForMaskedLM",
    "TrilmEncoderForQuestionAnswering",
    "TrilmEncoderForSequenceClassification",
    "TrilmEncoderForTokenClassification",
    "TrilmEncoderModel",
    "TrilmEncoderPreTrainedModel",
    "TrilmSeq2SeqConfig",
    "TrilmSeq2SeqDecoder",
    "TrilmSeq2SeqEncoder",
    "TrilmSeq2SeqForConditionalGeneration",
    "TrilmSeq2SeqModel",
    "TrilmSeq2SeqPreTrainedModel",
    "TrilmDecoderForCausalLM",
    "TrilmDecoderForSequenceClassification",
    "TrilmDecoderModel",
    "TrilmDecoderPreTrainedModel",
]
