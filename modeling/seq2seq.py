"""Encoder-decoder (T5/BART-like) family: a bidirectional encoder stack and a causal decoder stack with
cross-attention, sharing one token embedding, and a conditional-generation head for translation and
summarization."""

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from trilm.configuration import TrilmSeq2SeqConfig

from .blocks import (
    Attention,
    TransformerBlock,
    TransformerStack,
    TrilmPreTrainedModel,
    check_labels_shape,
    default_position_ids,
)
from .compat import accepts_cache_alias, cache_kwarg, output_cache
from .losses import masked_lm_loss


class TrilmSeq2SeqPreTrainedModel(TrilmPreTrainedModel):
    config: TrilmSeq2SeqConfig


class TrilmSeq2SeqEncoder(TrilmSeq2SeqPreTrainedModel, TransformerStack):
    """The encoder stack: bidirectional blocks over the source tokens."""

    def __init__(self, config: TrilmSeq2SeqConfig):
        super().__init__(config, num_layers=config.encoder_layers, is_causal=False)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        hidden_states = self.run(inputs_embeds, default_position_ids(inputs_embeds), mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class TrilmSeq2SeqDecoder(TrilmSeq2SeqPreTrainedModel, TransformerStack):
    """The decoder stack: causal self-attention, cross-attention over the encoder states, MLP."""

    _can_record_outputs = {
        "hidden_states": TransformerBlock,
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Attention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: TrilmSeq2SeqConfig):
        super().__init__(config, num_layers=config.decoder_layers, is_causal=True, has_cross_attention=True)
        self.post_init()

    @accepts_cache_alias
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is None:
            raise ValueError(
                "This decoder cross-attends to an encoder: pass encoder_hidden_states (the encoder's last_hidden_state), "
                "or call TrilmSeq2SeqModel / TrilmSeq2SeqForConditionalGeneration, which run the encoder first."
            )
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        if position_ids is None:
            position_ids = default_position_ids(inputs_embeds, cache)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwarg(cache.self_attention_cache if cache is not None else None),
        )
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        if use_cache and cache is None and not self.training:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        hidden_states = self.run(
            inputs_embeds,
            position_ids,
            causal_mask,
            encoder_hidden_states=encoder_hidden_states,
            cache=cache,
            encoder_attention_mask=cross_mask,
            **kwargs,
        )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, **cache_kwarg(cache))


class TrilmSeq2SeqModel(TrilmSeq2SeqPreTrainedModel):
    """Encoder and decoder sharing one token embedding (`shared`). Without `decoder_input_ids`, the decoder
    reads `input_ids` shifted right (denoising pretraining, as in BART)."""

    # As in BART: three modules whose weights are tied to `shared.weight`, so that loading knows the one
    # parameter to look for (and reports it missing, then initialises it, when a checkpoint lacks it).
    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
    # Tensor parallelism shards the shared embedding on the vocabulary, as transformers does a decoder's
    # `embed_tokens`: the LM head, tied to it by default, is sharded the same way (colwise), so that both or
    # neither are sharded. The encoder's and decoder's `embed_tokens` hold the same (tied) weight: each needs
    # the plan's hooks too.
    _tp_plan = {name: "embedding_rowwise" for name in ("shared", "encoder.embed_tokens", "decoder.embed_tokens")}

    def __init__(self, config: TrilmSeq2SeqConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.encoder = TrilmSeq2SeqEncoder(config)
        self.decoder = TrilmSeq2SeqDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = self.encoder.embed_tokens = self.decoder.embed_tokens = value

    @accepts_cache_alias
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass decoder_input_ids (or labels), or input_ids to shift right for denoising.")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id, self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **cache_kwarg(output_cache(decoder_outputs)),
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class TrilmSeq2SeqForConditionalGeneration(TrilmSeq2SeqPreTrainedModel, GenerationMixin):
    """Sequence-to-sequence LM (translation, summarization); `labels` are shifted right into
    `decoder_input_ids`, and `lm_head` is tied to the shared embedding by default."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: TrilmSeq2SeqConfig):
        super().__init__(config)
        self.model = TrilmSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @accepts_cache_alias
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            check_labels_shape(labels, logits.shape[:2], "one target token per decoder position (-100 for padding)")
            # Labels already line up with the logits (the decoder input is shifted instead): no shift here.
            loss = masked_lm_loss(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_kwarg(output_cache(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """The decoder input for teacher forcing: the start token, then the targets minus the last one."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id is not set: set it (e.g. to the EOS or PAD id) to train or generate.")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id is not set: set it so that -100 in labels can be replaced by padding.")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)
