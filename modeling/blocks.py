"""Building blocks shared by the three trilm families, chosen by config.

Read top to bottom: norms, position embeddings, attention, MLP, the residual block, the
`PreTrainedModel` base with its capability flags and weight init, and `TransformerStack`, the body every
family's model is made of. The family files (decoder, encoder, seq2seq) compose these; none of them
defines attention, norms or MLPs of its own.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.output_capturing import OutputRecorder

from trilm.configuration import TrilmConfig

from .compat import accepts_cache_alias, cache_kwarg
from .losses import LOSSES


# --------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 (numerically identical to Llama's)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        upcast = input_dtype != torch.float32  # no no-op casts: they are a quarter of a decode step's norm ops
        if upcast:
            hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * (hidden_states.to(input_dtype) if upcast else hidden_states)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def make_norm(config: TrilmConfig, size: int | None = None) -> nn.Module:
    """The config's norm over the last `size` features (default: the hidden size)."""
    size = size or config.hidden_size
    if config.norm_type == "rmsnorm":
        return RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps, bias=config.norm_bias)


# ------------------------------------------------------------------------------ position embeddings
ROPE_TABLE_POSITIONS = 8192  # cos/sin table rows kept by RotaryEmbedding.rotation (8 MiB at head_dim 128)

class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings; every rope type of transformers (`rope_parameters`)."""

    def __init__(self, config: TrilmConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: TrilmConfig, **kwargs) -> tuple[torch.Tensor, float]:
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def rotation(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, fold_sign(sin)), shaped (batch, seq, 1, head_dim) for `rotate`. Rope types with fixed
        frequencies read them from a table of the first positions (up to max_position_embeddings, at most
        ROPE_TABLE_POSITIONS), built once: a decode step then costs two lookups instead of ~15 small operations."""
        if self.rope_type in ("dynamic", "longrope") or torch.compiler.is_compiling() or self._past_table(position_ids):
            cos, sin = self(x, position_ids)
            return cos.unsqueeze(2), fold_sign(sin).unsqueeze(2)
        inv_freq = self.inv_freq  # rebuilt when it moves, changes dtype or is modified in place
        key = (x.device, inv_freq.dtype, inv_freq.data_ptr(), inv_freq._version)
        if getattr(self, "_table_key", None) != key:
            positions = torch.arange(self._table_positions, device=x.device)[None]
            cos, sin = self(torch.empty(0, device=x.device), positions)
            self._table, self._table_key = (cos[0], fold_sign(sin)[0]), key
        cos, signed_sin = self._table
        return cos[position_ids].unsqueeze(2).to(x.dtype), signed_sin[position_ids].unsqueeze(2).to(x.dtype)

    @property
    def _table_positions(self) -> int:
        return min(self.original_max_seq_len, ROPE_TABLE_POSITIONS)

    def _past_table(self, position_ids: torch.Tensor) -> bool:
        return not position_ids.numel() or int(position_ids.max()) >= self._table_positions


def fold_sign(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated, so that Llama's rotate_half(x) * sin == x.roll(half) * fold_sign(sin).
    Computed once per forward, it lets every layer rotate q and k in four operations each (Llama: seven)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x of shape (batch, seq, heads, head_dim), bit-identical to Llama's q * cos + rotate_half(q) * sin;
    cos and signed_sin have shape (batch, seq, 1, head_dim)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def sinusoidal_embedding(position_ids: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The original Transformer's fixed positions: sin on even channels, cos on odd ones."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angles = position_ids[..., None].float() * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., :dim].to(dtype)


class Embeddings(nn.Module):
    """Everything added to the token embeddings before the first block: scale, absolute positions
    (learned or sinusoidal; RoPE acts inside attention instead), token types, norm and dropout."""

    def __init__(self, config: TrilmConfig, num_token_types: int = 0):
        super().__init__()
        self.config = config
        self.scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
        self.position_offset = config.position_offset
        self.embed_positions = None
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings + config.position_offset, config.hidden_size)
        self.embed_token_types = nn.Embedding(num_token_types, config.hidden_size) if num_token_types else None
        self.norm = make_norm(config) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = inputs_embeds * self.scale if self.scale != 1.0 else inputs_embeds
        kind = self.config.position_embedding_type
        if kind == "learned":
            self._check_positions(position_ids)
            hidden_states = hidden_states + self.embed_positions(position_ids + self.position_offset)
        elif kind == "sinusoidal":
            hidden_states = hidden_states + sinusoidal_embedding(position_ids, hidden_states.shape[-1], hidden_states.dtype)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            hidden_states = hidden_states + self.embed_token_types(token_type_ids)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        return self.dropout(hidden_states)

    def _check_positions(self, position_ids: torch.Tensor) -> None:
        if torch.compiler.is_compiling():
            return
        limit = self.config.max_position_embeddings
        if position_ids.numel() and int(position_ids.max()) >= limit:
            raise ValueError(
                f"Position {int(position_ids.max())} is out of range: this model has learned position embeddings "
                f"for max_position_embeddings={limit} positions. Truncate the input to {limit} tokens "
                f"(e.g. tokenizer(..., truncation=True, max_length={limit}))."
            )


# -------------------------------------------------------------------------------------------- attention
def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim) for grouped-query attention."""
    if n_rep == 1:
        return hidden_states
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is None and module.is_causal and query.shape[2] > 1:
        # A mask built for sdpa may be None, leaving causality to the kernel: make it explicit here.
        q_len, kv_len = query.shape[2], key_states.shape[2]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    elif attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def _reduced_precision(query_states: torch.Tensor) -> bool:
    """Attention runs below float32: bfloat16/float16 inputs, or CPU autocast (where RoPE leaves q and k in
    float32 and autocast casts them down for the attention matmuls)."""
    if query_states.dtype != torch.float32:
        return True
    device = query_states.device.type
    return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != torch.float32


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads, as self-attention (causal or bidirectional, with RoPE
    when configured) or as cross-attention over encoder states. The kernel is whichever
    `config._attn_implementation` names (eager, sdpa, flex, flash), through `ALL_ATTENTION_FUNCTIONS`."""

    def __init__(self, config: TrilmConfig, layer_idx: int, is_causal: bool, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        q_size, kv_size = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        output_bias = getattr(config, "attention_output_bias", None)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_bias if output_bias is None else output_bias)
        self.o_proj.writes_residual = True
        self.qk_norm = getattr(config, "qk_norm", False)
        if self.qk_norm:  # per head, before RoPE (Qwen3)
            self.q_norm, self.k_norm = make_norm(config, self.head_dim), make_norm(config, self.head_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        key_value_states: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        if self.is_cross_attention:
            query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim)
            query_states = (self.q_norm(query_states) if self.qk_norm else query_states).transpose(1, 2)
            key_states, value_states = self._cross_key_values(key_value_states, cache)
        else:
            # (batch, seq, heads, head_dim) while RoPE runs: contiguous, so its elementwise ops are fast.
            query_states, key_states, value_states = (
                proj(hidden_states).view(*input_shape, -1, self.head_dim) for proj in (self.q_proj, self.k_proj, self.v_proj)
            )
            if self.qk_norm:
                query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
            if position_embeddings is not None:
                query_states, key_states = rotate(query_states, *position_embeddings), rotate(key_states, *position_embeddings)
            query_states, key_states, value_states = (t.transpose(1, 2) for t in (query_states, key_states, value_states))
            if cache is not None:
                self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key_states, value_states = self_attention_cache.update(key_states, value_states, self.layer_idx)

        attn_output, attn_weights = self._attention_interface(query_states)(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=self.is_causal,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights

    def _attention_interface(self, query_states: torch.Tensor) -> Callable:
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and query_states.device.type == "cpu" and _reduced_precision(query_states):
            # Measured on CPU (torch 2.13, docs/results.md): sdpa in bfloat16 is 1.5x slower than eager attention.
            return eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)

    def _cross_key_values(self, key_value_states: torch.Tensor, cache: Cache | None):
        """Keys and values of the encoder states: computed once, then read from the cross-attention cache."""
        cross_cache = cache.cross_attention_cache if isinstance(cache, EncoderDecoderCache) else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx):
            return cross_cache.layers[self.layer_idx].keys, cross_cache.layers[self.layer_idx].values
        kv_shape = (*key_value_states.shape[:-1], -1, self.head_dim)
        key_states = self.k_proj(key_value_states).view(kv_shape)
        key_states = (self.k_norm(key_states) if self.qk_norm else key_states).transpose(1, 2)
        value_states = self.v_proj(key_value_states).view(kv_shape).transpose(1, 2)
        if cross_cache is not None:
            key_states, value_states = cross_cache.update(key_states, value_states, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key_states, value_states


# ------------------------------------------------------------------------------------------------ MLP
class MLP(nn.Module):
    """Gated (SwiGLU/GeGLU: down(act(gate(x)) * up(x))) or plain (down(act(up(x)))) feed-forward."""

    def __init__(self, config: TrilmConfig):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias) if config.mlp_type == "gated" else None
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.down_proj.writes_residual = True
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act_fn(self.up_proj(x)))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


# ------------------------------------------------------------------------------------- residual block
class TransformerBlock(GradientCheckpointingLayer):
    """Self-attention, optional cross-attention, MLP; each a residual sublayer with its norm before
    (pre-norm: x + f(norm(x))) or after (post-norm: norm(x + f(x))) it."""

    def __init__(self, config: TrilmConfig, layer_idx: int, is_causal: bool, has_cross_attention: bool = False):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = Attention(config, layer_idx, is_causal=is_causal)
        self.self_attn_norm = make_norm(config)
        self.cross_attn = Attention(config, layer_idx, is_causal=False, is_cross_attention=True) if has_cross_attention else None
        self.cross_attn_norm = make_norm(config) if has_cross_attention else None
        self.mlp = MLP(config)
        self.mlp_norm = make_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout) if config.hidden_dropout > 0 else None

    def _residual(self, norm: nn.Module, sublayer: Callable, hidden_states: torch.Tensor) -> torch.Tensor:
        output = sublayer(norm(hidden_states) if self.pre_norm else hidden_states)
        if self.dropout is not None:
            output = self.dropout(output)
        return hidden_states + output if self.pre_norm else norm(hidden_states + output)

    @accepts_cache_alias
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # encoder_hidden_states come third, as in BART: the stack passes them positionally, because reentrant
        # gradient checkpointing only tracks a layer's positional inputs.
        kwargs.pop("use_cache", None)
        hidden_states = self._residual(
            self.self_attn_norm,
            lambda x: self.self_attn(x, attention_mask, position_embeddings=position_embeddings, cache=cache, **kwargs)[0],
            hidden_states,
        )
        if self.cross_attn is not None:
            hidden_states = self._residual(
                self.cross_attn_norm,
                lambda x: self.cross_attn(
                    x, encoder_attention_mask, cache=cache, key_value_states=encoder_hidden_states, **kwargs
                )[0],
                hidden_states,
            )
        return self._residual(self.mlp_norm, self.mlp, hidden_states)


# -------------------------------------------------------------------------------------------- base
class TrilmPreTrainedModel(PreTrainedModel):
    """Capability flags and weight init shared by every trilm model."""

    config: TrilmConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": TransformerBlock,
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
    }

    @property
    def loss_function(self) -> Callable:
        """transformers' loss for this head's `loss_type`, with trilm's blockwise cross-entropy for the
        language-model losses (`modeling/losses.py`); a loss set by the user (`model.loss_function = f`) wins."""
        if "_loss_function" not in self.__dict__ and self.loss_type in LOSSES:
            return LOSSES[self.loss_type]
        return super().loss_function

    @loss_function.setter
    def loss_function(self, value: Callable) -> None:
        self._loss_function = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # GPT-2's scaled init: projections that write into the residual stream shrink with depth.
        if getattr(module, "writes_residual", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)


# ------------------------------------------------------------------------------------------- stack
class TransformerStack(TrilmPreTrainedModel):
    """The body of every trilm model: token embeddings, the blocks and (pre-norm) a final norm.

    Families subclass it and write their own `forward`: they build the mask that fits them (causal,
    bidirectional, cross) and call `embed` and `run`. Module names stay flat (`embed_tokens`, `layers`,
    `norm`) so that tools looking for transformers' standard names find them."""

    def __init__(
        self,
        config: TrilmConfig,
        num_layers: int,
        is_causal: bool,
        has_cross_attention: bool = False,
        num_token_types: int = 0,
    ):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embeddings = Embeddings(config, num_token_types)
        self.rotary_emb = RotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.layers = nn.ModuleList(
            [TransformerBlock(config, i, is_causal=is_causal, has_cross_attention=has_cross_attention) for i in range(num_layers)]
        )
        self.norm = make_norm(config) if config.norm_position == "pre" else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            self._check_token_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        return inputs_embeds

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        if torch.compiler.is_compiling() or not input_ids.numel():
            return
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= self.embed_tokens.num_embeddings:
            raise ValueError(
                f"input_ids hold token id {high if high >= 0 else low}, outside this model's vocabulary of "
                f"{self.embed_tokens.num_embeddings} tokens: the tokenizer does not match the model "
                "(use a tokenizer whose vocabulary fits config.vocab_size, or resize_token_embeddings)."
            )

    def run(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        **layer_kwargs,
    ) -> torch.Tensor:
        hidden_states = self.embeddings(inputs_embeds, position_ids, token_type_ids)
        position_embeddings = self.rotary_emb.rotation(hidden_states, position_ids) if self.rotary_emb is not None else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask,
                encoder_hidden_states,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                **cache_kwarg(cache),
                **layer_kwargs,
            )
        return self.norm(hidden_states) if self.norm is not None else hidden_states


def default_position_ids(inputs_embeds: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
    past_seen_tokens = cache.get_seq_length() if cache is not None else 0
    return (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens).unsqueeze(0)


def check_labels_shape(labels: torch.Tensor, expected: tuple, meaning: str) -> None:
    """The `ValueError` every head raises for `labels` of the wrong shape, saying what they should hold."""
    if tuple(labels.shape) != tuple(expected):
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(expected)}: {meaning}.")
