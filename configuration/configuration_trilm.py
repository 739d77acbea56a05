"""Configurations of the three trilm families.

One vocabulary describes all three (as litgpt's one `Config` does): `TrilmConfig` holds the fields every
family shares and checks them; each family adds its model_type, its defaults and its own fields. The defaults
are modern (pre-norm, RMSNorm, RoPE, gated MLP); the other values exist so that classic architectures (BERT,
BART, the original Transformer) are expressible exactly.
"""

from __future__ import annotations

import functools
import os
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# Allowed values of the enumerated fields, in the order the error messages list them.
CHOICES = {
    "mlp_type": ("gated", "plain"),
    "norm_type": ("rmsnorm", "layernorm"),
    "norm_position": ("pre", "post"),
    "position_embedding_type": ("rope", "sinusoidal", "learned"),
}

# The modules of trilm.modeling that make up the models, in dependency order. Every saved config is written
# with two flat files beside it, so that `trust_remote_code=True` loads the checkpoint through `auto_map`
# where only torch and transformers are installed: this file as it is, and `modeling_trilm.py`, those modules
# joined into one with the package-internal imports replaced by one relative import of this file.
MODELING_MODULES = ("compat", "losses", "blocks", "decoder", "encoder", "seq2seq")
REMOTE_CODE_FILES = ("configuration_trilm.py", "modeling_trilm.py")


@functools.cache
def flat_modeling_source() -> str:
    """The source of `modeling_trilm.py`: trilm.modeling's model modules joined, importing only torch,
    transformers and (relatively) `configuration_trilm`. Built once per process (every checkpoint writes it)."""
    import ast
    import importlib

    parts = [
        '"""trilm models (remote code, generated from trilm.modeling by trilm when the checkpoint was saved)."""',
        "",
        "from .configuration_trilm import TrilmConfig, TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig  # noqa: F401",
    ]
    for name in MODELING_MODULES:
        source = open(importlib.import_module(f"trilm.modeling.{name}").__file__).read()
        lines = source.splitlines()
        internal = [node for node in ast.parse(source).body
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("trilm"))]
        for node in sorted(internal, key=lambda n: n.lineno, reverse=True):
            del lines[node.lineno - 1 : node.end_lineno]
        parts += ["", f"# {'-' * 100} from trilm/modeling/{name}.py", *lines]
    return "\n".join(parts) + "\n"


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """Write the two remote-code files into `save_directory`: generated from the installed package, or,
    where this module is itself remote code, copied from beside it (a re-saved remote checkpoint gets the
    same two files)."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = __name__.startswith("trilm.")
    for filename in REMOTE_CODE_FILES:
        if filename == "modeling_trilm.py" and installed:
            source = flat_modeling_source()
        elif os.path.isfile(os.path.join(here, filename)):
            with open(os.path.join(here, filename)) as f:
                source = f.read()
        else:
            continue  # a remote config loaded without its models: the folder keeps what it has
        target = os.path.join(save_directory, filename)
        if os.path.abspath(target) != os.path.join(here, filename):
            with open(target, "w") as f:
                f.write(source)


def _field_error(name: str, value: Any, requirement: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: {requirement}.")


@strict
class TrilmConfig(PreTrainedConfig):
    """Fields and checks shared by the three families. Not used on its own: pick a family's config."""

    # Auto class name -> trilm class name, written into `auto_map` (a dict, as TRL expects).
    auto_classes: ClassVar[dict[str, str]] = {}
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache's name before and since transformers 5.24

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    hidden_act: str = "silu"
    mlp_type: str = "gated"
    norm_type: str = "rmsnorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-6
    norm_bias: bool = True
    position_embedding_type: str = "rope"
    rope_theta: float = 10000.0
    rope_parameters: dict | None = None
    max_position_embeddings: int = 2048
    position_offset: int = 0
    scale_embedding: bool = False
    embedding_norm: bool = False
    attention_bias: bool = False
    attention_output_bias: bool | None = None  # o_proj's bias; None: as attention_bias (Qwen2: q/k/v biased, o not)
    qk_norm: bool = False  # a norm over each head's queries and keys before RoPE (Qwen3)
    mlp_bias: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            # The usual widths: 4x for a plain MLP, 8/3x (rounded to 64) for a gated one of the same cost.
            self.intermediate_size = (
                4 * self.hidden_size if self.mlp_type == "plain" else 64 * -(-8 * self.hidden_size // (3 * 64))
            )
        self.check()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.position_embedding_type == "rope":
            kwargs.setdefault("rope_theta", self.rope_theta)
        self.auto_map = {**(self.auto_map or {}), **self._canonical_auto_map()}
        if self.base_model_tp_plan and self.mlp_type == "plain":
            # The tensor-parallel plan names only modules this config builds: a plain MLP has no gate_proj.
            self.base_model_tp_plan = {k: v for k, v in self.base_model_tp_plan.items() if not k.endswith(".mlp.gate_proj")}
        super().__post_init__(**kwargs)
        if self.rope_parameters:
            self.rope_theta = float(self.rope_parameters.get("rope_theta", self.rope_theta))

    def check(self) -> None:
        """Raise a `ValueError` naming the field for every invalid value or combination."""
        for name in self.positive_int_fields():
            value = getattr(self, name)
            if value is None or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _field_error(name, value, "it must be a positive integer")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise _field_error(name, getattr(self, name), f"allowed values are {', '.join(map(repr, allowed))}")
        if self.hidden_act not in ACT2FN:
            raise _field_error("hidden_act", self.hidden_act, "allowed values are the keys of transformers' ACT2FN, e.g. 'silu', 'gelu'")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise _field_error(
                "hidden_size",
                self.hidden_size,
                f"it must be divisible by num_attention_heads={self.num_attention_heads} (or set head_dim explicitly)",
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise _field_error(
                "num_key_value_heads",
                self.num_key_value_heads,
                f"it must divide num_attention_heads={self.num_attention_heads} (grouped-query attention)",
            )
        head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.position_embedding_type == "rope" and head_dim % 2:
            raise _field_error("head_dim", head_dim, "rotary position embeddings need an even head_dim")
        if not self.norm_eps > 0:
            raise _field_error("norm_eps", self.norm_eps, "it must be positive")
        if self.position_offset < 0:
            raise _field_error("position_offset", self.position_offset, "it must be zero or positive")
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise _field_error(name, getattr(self, name), "a dropout probability must lie in [0, 1)")
        if not self.initializer_range > 0:
            raise _field_error("initializer_range", self.initializer_range, "it must be positive")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", *self.extra_token_id_fields()):
            value = getattr(self, name)
            for token_id in value if isinstance(value, list) else [value]:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    raise _field_error(name, value, f"token ids must lie in [0, vocab_size={self.vocab_size})")

    def positive_int_fields(self) -> tuple[str, ...]:
        return (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
            *(("head_dim",) if self.head_dim is not None else ()),
        )

    def extra_token_id_fields(self) -> tuple[str, ...]:
        return ()

    def _canonical_auto_map(self) -> dict[str, str]:
        entries = {"AutoConfig": f"configuration_trilm.{type(self).__name__}"}
        entries.update({auto: f"modeling_trilm.{cls}" for auto, cls in self.auto_classes.items()})
        return entries

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        self.auto_map = {**(self.auto_map or {}), **self._canonical_auto_map()}
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_remote_code(save_directory)


@strict
class TrilmDecoderConfig(TrilmConfig):
    """Decoder-only (GPT/Llama-like) model. Defaults: pre-norm RMSNorm, RoPE, gated SiLU MLP, tied embeddings."""

    model_type = "trilm_decoder"
    auto_classes: ClassVar[dict[str, str]] = {
        "AutoModel": "TrilmDecoderModel",
        "AutoModelForCausalLM": "TrilmDecoderForCausalLM",
        "AutoModelForSequenceClassification": "TrilmDecoderForSequenceClassification",
    }
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }


@strict
class TrilmEncoderConfig(TrilmConfig):
    """Encoder-only (BERT-like) model. Defaults like ModernBERT: pre-norm LayerNorm without bias, RoPE, gated
    GELU, embedding norm. BERT is `norm_position="post"`, `position_embedding_type="learned"`,
    `mlp_type="plain"`, `hidden_act="gelu"`, biases, `type_vocab_size=2`, `pooler_activation="tanh"`."""

    model_type = "trilm_encoder"
    auto_classes: ClassVar[dict[str, str]] = {
        "AutoModel": "TrilmEncoderModel",
        "AutoModelForMaskedLM": "TrilmEncoderForMaskedLM",
        "AutoModelForSequenceClassification": "TrilmEncoderForSequenceClassification",
        "AutoModelForTokenClassification": "TrilmEncoderForTokenClassification",
        "AutoModelForQuestionAnswering": "TrilmEncoderForQuestionAnswering",
    }

    hidden_act: str = "gelu"
    norm_type: str = "layernorm"
    norm_bias: bool = False
    embedding_norm: bool = True
    type_vocab_size: int = 0
    pooling: str = "cls"
    pooler_activation: str | None = None
    # Scale the pooled output to unit length (sentence-transformers' Normalize), as embedding models do.
    normalize_embeddings: bool = False
    mask_token_id: int | None = None
    # ModernBERT's sparse prediction: in training, run the MLM head and loss on labelled positions only
    # (the same loss, a fraction of the vocabulary projection); logits then hold those rows only.
    sparse_prediction: bool = False

    def check(self) -> None:
        super().check()
        if self.pooling not in ("cls", "mean"):
            raise _field_error("pooling", self.pooling, "allowed values are 'cls', 'mean'")
        if self.pooler_activation is not None and self.pooler_activation not in ACT2FN:
            raise _field_error("pooler_activation", self.pooler_activation, "use None or a key of ACT2FN, e.g. 'tanh'")
        if self.type_vocab_size < 0:
            raise _field_error("type_vocab_size", self.type_vocab_size, "it must be zero (no token types) or positive")

    def extra_token_id_fields(self) -> tuple[str, ...]:
        return ("mask_token_id",)


@strict
class TrilmSeq2SeqConfig(TrilmConfig):
    """Encoder-decoder (T5/BART-like) model. `encoder_layers`/`decoder_layers` default to
    `num_hidden_layers`, which then names the decoder's depth (what caches and `generate` read). BART is
    post-norm LayerNorm, learned positions with `position_offset=2`, embedding norm, plain GELU MLP and biases."""

    model_type = "trilm_seq2seq"
    auto_classes: ClassVar[dict[str, str]] = {
        "AutoModel": "TrilmSeq2SeqModel",
        "AutoModelForSeq2SeqLM": "TrilmSeq2SeqForConditionalGeneration",
    }

    encoder_layers: int | None = None
    decoder_layers: int | None = None
    decoder_start_token_id: int | None = None
    lm_head_bias: bool = False
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        self.encoder_layers = self.encoder_layers or self.num_hidden_layers
        self.decoder_layers = self.decoder_layers or self.num_hidden_layers
        self.num_hidden_layers = self.decoder_layers
        super().__post_init__(**kwargs)

    def positive_int_fields(self) -> tuple[str, ...]:
        return (*super().positive_int_fields(), "encoder_layers", "decoder_layers")

    def extra_token_id_fields(self) -> tuple[str, ...]:
        return ("decoder_start_token_id",)
