"""Encoder-only (BERT-like) family: a bidirectional stack of shared blocks with a pooled output usable as
sentence embeddings, and the task heads transformers users expect (masked LM, sequence and token
classification, extractive QA)."""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from trilm.configuration import TrilmEncoderConfig

from .blocks import TransformerStack, TrilmPreTrainedModel, check_labels_shape, default_position_ids, make_norm


class TrilmEncoderPreTrainedModel(TrilmPreTrainedModel):
    config: TrilmEncoderConfig


class TrilmEncoderModel(TrilmEncoderPreTrainedModel, TransformerStack):
    """Bidirectional blocks over token (+ token type) embeddings. `pooler_output` is the CLS token or the
    mean over non-pad tokens (`config.pooling`), followed by a dense layer when `pooler_activation` is set."""

    def __init__(self, config: TrilmEncoderConfig, add_pooling_layer: bool = True):
        super().__init__(
            config, num_layers=config.num_hidden_layers, is_causal=False, num_token_types=config.type_vocab_size
        )
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer and config.pooler_activation else None
        self.pooler_act = ACT2FN[config.pooler_activation] if self.pooler is not None else None
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        if position_ids is None:
            position_ids = default_position_ids(inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        hidden_states = self.run(inputs_embeds, position_ids, mask, token_type_ids, **kwargs)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.pool(hidden_states, attention_mask))

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.pooling == "cls":
            pooled = hidden_states[:, 0]
        elif attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        if self.pooler is not None:
            pooled = self.pooler_act(self.pooler(pooled))
        return pooled


class MaskedLMHead(nn.Module):
    """The transform BERT and ModernBERT apply before the vocabulary projection: dense, activation, norm."""

    def __init__(self, config: TrilmEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.norm = make_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act_fn(self.dense(hidden_states)))


class TrilmEncoderForMaskedLM(TrilmEncoderPreTrainedModel):
    """Masked language model; `lm_head` is tied to the token embeddings by default."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TrilmEncoderConfig):
        super().__init__(config)
        self.model = TrilmEncoderModel(config, add_pooling_layer=False)
        self.head = MaskedLMHead(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        hidden_states = outputs.last_hidden_state
        if labels is not None:
            check_labels_shape(labels, hidden_states.shape[:2], "(batch, sequence) token ids, -100 where not masked")
            if self.config.sparse_prediction and self.training:
                labelled = labels != -100
                hidden_states, labels = hidden_states[labelled], labels[labelled]
        logits = self.lm_head(self.head(hidden_states))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class TrilmEncoderForSequenceClassification(TrilmEncoderPreTrainedModel):
    """Classifier or regressor on the pooled output; the loss follows `config.problem_type` as in transformers."""

    def __init__(self, config: TrilmEncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = TrilmEncoderModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            check_classification_labels(labels, logits, self.config)
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class TrilmEncoderForTokenClassification(TrilmEncoderPreTrainedModel):
    """A label per token (NER, POS tagging)."""

    def __init__(self, config: TrilmEncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = TrilmEncoderModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            check_labels_shape(labels, logits.shape[:2], "(batch, sequence) label ids, -100 to ignore a token")
            loss = self.loss_function(logits=logits, labels=labels, config=self.config)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class TrilmEncoderForQuestionAnswering(TrilmEncoderPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (`qa_outputs`, as in BERT)."""

    def __init__(self, config: TrilmEncoderConfig):
        super().__init__(config)
        self.model = TrilmEncoderModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
                check_positions(name, positions, batch_size=start_logits.shape[0], length=start_logits.shape[1])
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ------------------------------------------------------------------------------------- label checks
def check_classification_labels(labels: torch.Tensor, logits: torch.Tensor, config: TrilmEncoderConfig) -> None:
    batch, num_labels = logits.shape
    problem = config.problem_type
    if problem is None:  # as transformers infers it
        multi = num_labels > 1 and labels.dtype not in (torch.long, torch.int)
        problem = "regression" if num_labels == 1 else "multi_label_classification" if multi else "single_label_classification"
    if problem == "multi_label_classification":
        check_labels_shape(labels, (batch, num_labels), "multi-label classification takes a 0/1 float row per example")
    elif problem == "single_label_classification" or num_labels == 1:
        if labels.shape not in ((batch,), (batch, 1)):
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected ({batch},): one {problem} target per example.")
    else:
        check_labels_shape(labels, (batch, num_labels), "regression with several outputs takes a float row per example")


def check_positions(name: str, positions: torch.Tensor, batch_size: int, length: int) -> None:
    positions = positions.reshape(-1)
    if positions.shape[0] != batch_size:
        raise ValueError(f"{name} has {positions.shape[0]} entries for a batch of {batch_size}: give one position per example.")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= length):
        raise ValueError(
            f"{name} must index tokens of the input (0 to {length - 1}); got {positions.tolist()}. "
            "Point unanswerable examples at the CLS token (position 0)."
        )
