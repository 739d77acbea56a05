"""Decoder-only (GPT/Llama-like) family: a causal stack of shared blocks, a language-model head, and a
sequence-classification head that serves as a TRL reward model."""

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from trilm.configuration import TrilmDecoderConfig

from .blocks import TransformerStack, TrilmPreTrainedModel, default_position_ids
from .compat import accepts_cache_alias, cache_kwarg, output_cache


class TrilmDecoderPreTrainedModel(TrilmPreTrainedModel):
    config_class = TrilmDecoderConfig
    config: TrilmDecoderConfig


class TrilmDecoderModel(TrilmDecoderPreTrainedModel, TransformerStack):
    """Token embeddings, causal blocks and a final norm (pre-norm only); returns the last hidden states."""

    def __init__(self, config: TrilmDecoderConfig):
        super().__init__(config, num_layers=config.num_hidden_layers, is_causal=True)
        self.post_init()

    @accepts_cache_alias
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        if position_ids is None:
            position_ids = default_position_ids(inputs_embeds, cache)
        # The mask is built before any cache is created: without a cache, masking_utils recognises packed
        # sequences (position_ids restarting at 0, no attention mask) and keeps them from attending to each other.
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwarg(cache),
        )
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        hidden_states = self.run(inputs_embeds, position_ids, causal_mask, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **cache_kwarg(cache))


class TrilmDecoderForCausalLM(TrilmDecoderPreTrainedModel, GenerationMixin):
    """Causal language model: the decoder stack and a linear `lm_head` (tied to the embeddings by default)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: TrilmDecoderConfig):
        super().__init__(config)
        self.model = TrilmDecoderModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_cache_alias
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_kwarg(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class TrilmDecoderForSequenceClassification(TrilmDecoderPreTrainedModel):
    """Sequence classifier / reward model: a linear `score` head on the last non-pad token of each row."""

    def __init__(self, config: TrilmDecoderConfig):
        super().__init__(config)
        if config.pad_token_id is not None and config.pad_token_id in _as_list(config.eos_token_id):
            raise ValueError(
                f"pad_token_id={config.pad_token_id} equals eos_token_id: this head scores the last non-pad token, "
                "so with pad == EOS it would skip the EOS that ends each text. Give the tokenizer a dedicated "
                "pad token and set config.pad_token_id to its id."
            )
        self.num_labels = config.num_labels
        self.model = TrilmDecoderModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    @accepts_cache_alias
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]
        pad_token_id = self.config.pad_token_id
        if pad_token_id is None or input_ids is None:
            if batch_size != 1 and attention_mask is None:
                raise ValueError(
                    "Cannot find the last token of each row in a batch: set config.pad_token_id and pass input_ids, "
                    "or pass an attention_mask."
                )
            if attention_mask is None:
                last_token = torch.full((batch_size,), logits.shape[1] - 1, device=logits.device)
            else:
                last_token = _last_true_index(attention_mask.to(logits.device).bool())
        else:
            # The rightmost non-pad token, so that left and right padding both work.
            last_token = _last_true_index(input_ids.to(logits.device) != pad_token_id)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_token]

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            **cache_kwarg(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _last_true_index(mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int32)
    return (positions * mask.to(torch.int32)).argmax(-1)
