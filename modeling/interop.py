"""State-dict adapters between transformers' reference models and trilm (as torchtitan's state_dict_adapter).

`from_transformers(model)` returns the trilm model of the same family that computes the same function;
`to_transformers(model)` goes back. Each family is one `Adapter`: a config mapping both ways and a list of
parameter-name rewrites. Nothing here is a second implementation of a model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedModel

from trilm.configuration import TrilmConfig, TrilmDecoderConfig

from .decoder import TrilmDecoderForCausalLM, TrilmDecoderModel


@dataclass
class Adapter:
    """How one transformers architecture maps onto a trilm family."""

    classes: dict[type[PreTrainedModel], type[PreTrainedModel]]  # transformers class -> trilm class
    hf_config_class: type
    trilm_config_class: type[TrilmConfig]
    same_fields: tuple[str, ...]  # config fields of the same name and meaning on both sides
    renamed_fields: dict[str, str]  # transformers field -> trilm field
    fixed: dict  # trilm config values the transformers architecture implies
    renames: list[tuple[str, str]] = field(default_factory=list)  # (transformers text, trilm text) in names

    def config_to_trilm(self, config) -> TrilmConfig:
        values = {name: getattr(config, name) for name in self.same_fields}
        values |= {ours: getattr(config, theirs) for theirs, ours in self.renamed_fields.items()}
        return self.trilm_config_class(**copy.deepcopy(values), **self.fixed)

    def config_to_hf(self, config: TrilmConfig):
        for name, value in self.fixed.items():
            if getattr(config, name) != value:
                raise ValueError(
                    f"{self.hf_config_class.__name__} has no equivalent of {name}={getattr(config, name)!r}; "
                    f"it needs {name}={value!r}."
                )
        values = {name: getattr(config, name) for name in self.same_fields}
        values |= {theirs: getattr(config, ours) for theirs, ours in self.renamed_fields.items()}
        return self.hf_config_class(**copy.deepcopy(values))

    def to_trilm_key(self, key: str) -> str:
        for hf_text, trilm_text in self.renames:
            key = key.replace(hf_text, trilm_text)
        return key

    def to_hf_key(self, key: str) -> str:
        for hf_text, trilm_text in reversed(self.renames):
            key = key.replace(trilm_text, hf_text)
        return key


_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")

LLAMA = Adapter(
    classes={LlamaForCausalLM: TrilmDecoderForCausalLM, LlamaModel: TrilmDecoderModel},
    hf_config_class=LlamaConfig,
    trilm_config_class=TrilmDecoderConfig,
    same_fields=(
        *_TOKEN_IDS,
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "rope_parameters",
        "max_position_embeddings",
        "attention_bias",
        "mlp_bias",
        "attention_dropout",
        "initializer_range",
        "tie_word_embeddings",
    ),
    renamed_fields={"rms_norm_eps": "norm_eps"},
    fixed=dict(
        mlp_type="gated",
        norm_type="rmsnorm",
        norm_position="pre",
        position_embedding_type="rope",
        embedding_norm=False,
        scale_embedding=False,
    ),
    renames=[
        (".input_layernorm.", ".self_attn_norm."),
        (".post_attention_layernorm.", ".mlp_norm."),
    ],
)

ADAPTERS = [LLAMA]


def _convert(source: PreTrainedModel, target_class: type[PreTrainedModel], target_config, rename: Callable[[str], str]):
    target_config._attn_implementation = source.config._attn_implementation
    dtype = next(source.parameters()).dtype
    target = target_class(target_config).to(dtype)
    state = {rename(k): v for k, v in source.state_dict().items()}
    missing, unexpected = target.load_state_dict(state, strict=False)
    tied = set(target.get_expanded_tied_weights_keys(all_submodels=True))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"State dicts do not match: missing {missing}, unexpected {unexpected}.")
    if getattr(target_config, "tie_word_embeddings", False):
        target.tie_weights()
    return target.to(next(source.parameters()).device).train(source.training)


def from_transformers(model: PreTrainedModel) -> PreTrainedModel:
    """The trilm model computing the same function as a transformers `LlamaForCausalLM`/`LlamaModel`."""
    for adapter in ADAPTERS:
        for hf_class, trilm_class in adapter.classes.items():
            if type(model) is hf_class:
                return _convert(model, trilm_class, adapter.config_to_trilm(model.config), adapter.to_trilm_key)
    supported = ", ".join(c.__name__ for a in ADAPTERS for c in a.classes)
    raise ValueError(f"from_transformers supports {supported}; got {type(model).__name__}.")


def to_transformers(model: PreTrainedModel) -> PreTrainedModel:
    """The transformers reference model (e.g. `LlamaForCausalLM`) computing the same function as a trilm model."""
    for adapter in ADAPTERS:
        for hf_class, trilm_class in adapter.classes.items():
            if type(model) is trilm_class:
                return _convert(model, hf_class, adapter.config_to_hf(model.config), adapter.to_hf_key)
    supported = ", ".join(c.__name__ for a in ADAPTERS for c in a.classes.values())
    raise ValueError(f"to_transformers supports {supported}; got {type(model).__name__}.")
