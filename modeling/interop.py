"""State-dict adapters between transformers' reference models and trilm (as torchtitan's state_dict_adapter).

`from_transformers(model)` returns the trilm model of the same family that computes the same function;
`to_transformers(model)` goes back. Each family is one `Adapter`: a config mapping both ways and a list of
parameter-name rewrites. Nothing here is a second implementation of a model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import (
    AutoModel,
    BartConfig,
    BartForConditionalGeneration,
    BartModel,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
    Qwen3Model,
    PreTrainedModel,
)
from transformers.utils import cached_file

from trilm.configuration import TrilmConfig, TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig

from .decoder import TrilmDecoderForCausalLM, TrilmDecoderForSequenceClassification, TrilmDecoderModel
from .encoder import (
    TrilmEncoderForMaskedLM,
    TrilmEncoderForQuestionAnswering,
    TrilmEncoderForSequenceClassification,
    TrilmEncoderForTokenClassification,
    TrilmEncoderModel,
)
from .seq2seq import TrilmSeq2SeqForConditionalGeneration, TrilmSeq2SeqModel


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
    # trilm config values that depend on the transformers model (e.g. whether BERT has a pooler)
    model_extras: Callable[[PreTrainedModel], dict] = lambda model: {}
    # constructor arguments of the transformers class that depend on the trilm model
    hf_init_kwargs: Callable[[PreTrainedModel, type], dict] = lambda model, hf_class: {}
    # trilm config values the transformers architecture implies given the others (e.g. no GQA in BERT)
    implied: Callable[[TrilmConfig], dict] = lambda config: {}

    def config_to_trilm(self, config, extras: dict | None = None) -> TrilmConfig:
        values = {name: getattr(config, name, None) for name in self.same_fields}
        values |= {ours: getattr(config, theirs) for theirs, ours in self.renamed_fields.items()}
        return self.trilm_config_class(**{**copy.deepcopy(values), **self.fixed, **(extras or {})})

    def config_to_hf(self, config: TrilmConfig):
        for name, value in (self.fixed | self.implied(config)).items():
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
_TASK_FIELDS = ("id2label", "label2id", "problem_type")


def _multi_head(config: TrilmConfig) -> dict:
    """BERT and BART have plain multi-head attention: one key/value head per query head, of hidden / heads."""
    return {
        "num_key_value_heads": config.num_attention_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
    }

LLAMA = Adapter(
    classes={
        LlamaForCausalLM: TrilmDecoderForCausalLM,
        LlamaForSequenceClassification: TrilmDecoderForSequenceClassification,  # reward models, classifiers
        LlamaModel: TrilmDecoderModel,
    },
    hf_config_class=LlamaConfig,
    trilm_config_class=TrilmDecoderConfig,
    same_fields=(
        *_TOKEN_IDS,
        *_TASK_FIELDS,
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
        qk_norm=False,
    ),
    renames=[
        (".input_layernorm.", ".self_attn_norm."),
        (".post_attention_layernorm.", ".mlp_norm."),
    ],
    # o_proj's bias is attention_bias's in a Llama
    implied=lambda config: {"attention_output_bias": config.attention_output_bias if config.attention_output_bias in (None, config.attention_bias) else None},
)


def _qwen_extras(model: PreTrainedModel) -> dict:
    """Qwen2 and Qwen3 layers can attend within a sliding window, which trilm's attention does not express."""
    if getattr(model.config, "use_sliding_window", False) and "sliding_attention" in (model.config.layer_types or []):
        raise ValueError(f"{type(model).__name__} with use_sliding_window=True: trilm's attention has no sliding window.")
    return {}


_QWEN_FIELDS = tuple(name for name in LLAMA.same_fields if name not in ("attention_bias", "mlp_bias", "head_dim"))
QWEN2 = Adapter(  # Llama with biased q/k/v projections (o_proj without)
    classes={
        Qwen2ForCausalLM: TrilmDecoderForCausalLM,
        Qwen2ForSequenceClassification: TrilmDecoderForSequenceClassification,
        Qwen2Model: TrilmDecoderModel,
    },
    hf_config_class=Qwen2Config,
    trilm_config_class=TrilmDecoderConfig,
    same_fields=_QWEN_FIELDS,
    renamed_fields=LLAMA.renamed_fields,
    fixed={**LLAMA.fixed, "attention_bias": True, "attention_output_bias": False, "mlp_bias": False},
    renames=LLAMA.renames,
    model_extras=_qwen_extras,
    implied=lambda config: {"head_dim": config.hidden_size // config.num_attention_heads},
)
QWEN3 = Adapter(  # Llama with a per-head RMSNorm of queries and keys before RoPE
    classes={
        Qwen3ForCausalLM: TrilmDecoderForCausalLM,
        Qwen3ForSequenceClassification: TrilmDecoderForSequenceClassification,
        Qwen3Model: TrilmDecoderModel,
    },
    hf_config_class=Qwen3Config,
    trilm_config_class=TrilmDecoderConfig,
    same_fields=(*_QWEN_FIELDS, "attention_bias", "head_dim"),
    renamed_fields=LLAMA.renamed_fields,
    fixed={**LLAMA.fixed, "qk_norm": True, "mlp_bias": False},
    renames=LLAMA.renames,
    model_extras=_qwen_extras,
    implied=LLAMA.implied,
)



def _bert_extras(model: PreTrainedModel) -> dict:
    base = getattr(model, "bert", model)
    return {"pooler_activation": "tanh" if getattr(base, "pooler", None) is not None else None}


BERT = Adapter(
    classes={
        BertForMaskedLM: TrilmEncoderForMaskedLM,
        BertForSequenceClassification: TrilmEncoderForSequenceClassification,
        BertForTokenClassification: TrilmEncoderForTokenClassification,
        BertForQuestionAnswering: TrilmEncoderForQuestionAnswering,
        BertModel: TrilmEncoderModel,
    },
    hf_config_class=BertConfig,
    trilm_config_class=TrilmEncoderConfig,
    same_fields=(
        *_TOKEN_IDS,
        *_TASK_FIELDS,
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "tie_word_embeddings",
    ),
    renamed_fields={
        "layer_norm_eps": "norm_eps",
        "hidden_dropout_prob": "hidden_dropout",
        "attention_probs_dropout_prob": "attention_dropout",
    },
    fixed=dict(
        norm_type="layernorm",
        norm_bias=True,
        norm_position="post",
        position_embedding_type="learned",
        position_offset=0,
        mlp_type="plain",
        attention_bias=True,
        mlp_bias=True,
        embedding_norm=True,
        scale_embedding=False,
        pooling="cls",
        normalize_embeddings=False,
    ),
    renames=[
        ("bert.", "model."),
        ("embeddings.word_embeddings.", "embed_tokens."),
        ("embeddings.position_embeddings.", "embeddings.embed_positions."),
        ("embeddings.token_type_embeddings.", "embeddings.embed_token_types."),
        ("embeddings.LayerNorm.", "embeddings.norm."),
        ("encoder.layer.", "layers."),
        (".attention.self.query.", ".self_attn.q_proj."),
        (".attention.self.key.", ".self_attn.k_proj."),
        (".attention.self.value.", ".self_attn.v_proj."),
        (".attention.output.dense.", ".self_attn.o_proj."),
        (".attention.output.LayerNorm.", ".self_attn_norm."),
        (".intermediate.dense.", ".mlp.up_proj."),
        (".output.dense.", ".mlp.down_proj."),
        (".output.LayerNorm.", ".mlp_norm."),
        ("pooler.dense.", "pooler."),
        ("cls.predictions.transform.dense.", "head.dense."),
        ("cls.predictions.transform.LayerNorm.", "head.norm."),
        ("cls.predictions.decoder.", "lm_head."),
        ("cls.predictions.bias", "lm_head.bias"),
    ],
    model_extras=_bert_extras,
    implied=_multi_head,
    hf_init_kwargs=lambda model, hf_class: (
        {"add_pooling_layer": model.pooler is not None} if hf_class is BertModel else {}
    ),
)


def _bart_extras(model: PreTrainedModel) -> dict:
    config = model.config
    for ours, theirs in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(config, ours) != getattr(config, theirs):
            raise ValueError(f"trilm's seq2seq model has one {ours.split('_', 1)[1]} for both stacks; this BART has {ours}={getattr(config, ours)} and {theirs}={getattr(config, theirs)}.")
    return {"lm_head_bias": isinstance(model, BartForConditionalGeneration)}


BART = Adapter(
    classes={BartForConditionalGeneration: TrilmSeq2SeqForConditionalGeneration, BartModel: TrilmSeq2SeqModel},
    hf_config_class=BartConfig,
    trilm_config_class=TrilmSeq2SeqConfig,
    same_fields=(
        *_TOKEN_IDS,
        *_TASK_FIELDS,
        "decoder_start_token_id",
        "vocab_size",
        "encoder_layers",
        "decoder_layers",
        "max_position_embeddings",
        "scale_embedding",
        "attention_dropout",
        "tie_word_embeddings",
    ),
    renamed_fields={
        "d_model": "hidden_size",
        "encoder_attention_heads": "num_attention_heads",
        "decoder_attention_heads": "num_attention_heads",
        "encoder_ffn_dim": "intermediate_size",
        "decoder_ffn_dim": "intermediate_size",
        "activation_function": "hidden_act",
        "dropout": "hidden_dropout",
        "init_std": "initializer_range",
    },
    fixed=dict(
        norm_type="layernorm",
        norm_bias=True,
        norm_eps=1e-5,
        norm_position="post",
        position_embedding_type="learned",
        position_offset=2,
        mlp_type="plain",
        attention_bias=True,
        mlp_bias=True,
        embedding_norm=True,
    ),
    renames=[
        ("final_logits_bias", "lm_head.bias"),
        (".out_proj.", ".o_proj."),
        (".encoder_attn.", ".cross_attn."),
        (".encoder_attn_layer_norm.", ".cross_attn_norm."),
        (".self_attn_layer_norm.", ".self_attn_norm."),
        (".fc1.", ".mlp.up_proj."),
        (".fc2.", ".mlp.down_proj."),
        (".final_layer_norm.", ".mlp_norm."),
        ("coder.embed_positions.", "coder.embeddings.embed_positions."),
        ("coder.layernorm_embedding.", "coder.embeddings.norm."),
    ],
    model_extras=_bart_extras,
    implied=_multi_head,
)

ADAPTERS = [LLAMA, QWEN2, QWEN3, BERT, BART]


def _convert(source: PreTrainedModel, target_class: type, target_config, rename: Callable[[str], str], **init_kwargs):
    target_config._attn_implementation = source.config._attn_implementation
    target = target_class(target_config, **init_kwargs).to(next(source.parameters()).dtype)
    target_shapes = {k: v.shape for k, v in target.state_dict().items()}
    state = {}
    for key, value in source.state_dict().items():
        key = rename(key)
        pooler = key.startswith("pooler.") or ".pooler." in key
        if key not in target_shapes and pooler and getattr(target_config, "pooler_activation", 0) is None:
            continue  # BERT's pooler, which a sentence-transformers model does not use for its embedding
        # The same numbers may be laid out differently (BART's final_logits_bias is (1, vocab)).
        shape = target_shapes.get(key)
        state[key] = value.reshape(shape) if shape is not None and value.numel() == shape.numel() else value
    missing, unexpected = target.load_state_dict(state, strict=False)
    tied = set(target.get_expanded_tied_weights_keys(all_submodels=True))
    optional = getattr(target, "_keys_to_ignore_on_load_missing", None) or []
    missing = [k for k in missing if k not in tied and k not in optional]
    if missing or unexpected:
        raise ValueError(f"State dicts do not match: missing {missing}, unexpected {unexpected}.")
    if getattr(target_config, "tie_word_embeddings", False):
        target.tie_weights()
    if getattr(source, "generation_config", None) is not None and getattr(target, "generation_config", None) is not None:
        target.generation_config = copy.deepcopy(source.generation_config)
    return target.to(next(source.parameters()).device).train(source.training)


def from_transformers(model: PreTrainedModel, **config_fields) -> PreTrainedModel:
    """The trilm model computing the same function as a transformers Llama, BERT or BART model.
    `config_fields` set trilm config values the transformers model does not hold (e.g. the pooling of a
    sentence-transformers model, from `sentence_transformers_fields`)."""
    for adapter in ADAPTERS:
        for hf_class, trilm_class in adapter.classes.items():
            if type(model) is hf_class:
                config = adapter.config_to_trilm(model.config, {**adapter.model_extras(model), **config_fields})
                return _convert(model, trilm_class, config, adapter.to_trilm_key)
    supported = ", ".join(c.__name__ for a in ADAPTERS for c in a.classes)
    raise ValueError(f"from_transformers supports {supported}; got {type(model).__name__}.")


def to_transformers(model: PreTrainedModel) -> PreTrainedModel:
    """The transformers reference model (Llama, BERT, BART) computing the same function as a trilm model."""
    refusals = []  # a trilm decoder is a Llama, a Qwen2 or a Qwen3 as its config says: the first that expresses it
    for adapter in ADAPTERS:
        for hf_class, trilm_class in adapter.classes.items():
            if type(model) is trilm_class:
                try:
                    config = adapter.config_to_hf(model.config)
                except ValueError as refusal:
                    refusals.append(refusal)
                    continue
                return _convert(model, hf_class, config, adapter.to_hf_key, **adapter.hf_init_kwargs(model, hf_class))
    if refusals:
        raise refusals[0]
    supported = ", ".join(c.__name__ for a in ADAPTERS for c in a.classes.values())
    raise ValueError(f"to_transformers supports {supported}; got {type(model).__name__}.")


# sentence-transformers module types (as `modules.json` names them, before and since its 6.0 layout) that a
# trilm encoder's pooled output expresses.
_ST_MODULES = ("Transformer", "Pooling", "Normalize")


def sentence_transformers_fields(path: str, **hub_kwargs) -> dict:
    """The trilm encoder config values that make the pooled output of a converted sentence-transformers
    model its embedding (`pooling`, no pooler, `normalize_embeddings`), read from the folder's (or Hub
    repository's) `modules.json` and pooling configuration; {} where `path` is no sentence-transformers model.
    Only JSON is read."""
    modules_file = cached_file(path, "modules.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if modules_file is None:
        return {}
    with open(modules_file) as f:
        modules = [(m["type"].rsplit(".", 1)[-1], m["path"]) for m in json.load(f)]
    kinds = [kind for kind, _ in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or modules[0][1] != "":
        raise ValueError(
            f"{path} is a sentence-transformers model of modules {kinds} (paths {[p for _, p in modules]}): trilm "
            "converts Transformer (the folder itself) -> Pooling (cls or mean) -> optional Normalize."
        )
    pooling_file = cached_file(path, f"{modules[1][1]}/config.json", **hub_kwargs)
    with open(pooling_file) as f:
        pooling = json.load(f)
    mode = pooling.get("pooling_mode")
    if mode is None:  # the layout before sentence-transformers 6: one boolean per mode
        modes = [key.removeprefix("pooling_mode_") for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
        mode = modes[0] if len(modes) == 1 else modes
    mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode)
    if mode not in ("cls", "mean"):
        raise ValueError(f"{path} pools by {mode!r}: a trilm encoder pools by 'cls' or 'mean'.")
    return {"pooling": mode, "pooler_activation": None, "normalize_embeddings": "Normalize" in kinds}


def from_sentence_transformers(path: str, **kwargs) -> TrilmEncoderModel:
    """The trilm encoder whose pooled output is the embedding of the sentence-transformers (BERT) model in
    `path`: converted by `from_transformers`, keeping its pooling and normalisation. Saving it writes the
    sentence-transformers files again. `kwargs` go to `AutoModel.from_pretrained`."""
    fields = sentence_transformers_fields(path)
    if not fields:
        raise ValueError(f"{path} has no modules.json, so it is no sentence-transformers model; use from_transformers.")
    return from_transformers(AutoModel.from_pretrained(path, **kwargs), **fields)
