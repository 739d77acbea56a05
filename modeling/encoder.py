"""Encoder-only (BERT-like) family: a bidirectional stack of shared blocks with a pooled output usable as
sentence embeddings, and the task heads transformers users expect (masked LM, sequence and token
classification, extractive QA)."""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
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
    mean over non-pad tokens (`config.pooling`), followed by a dense layer when `pooler_activation` is set,
    scaled to unit length when `normalize_embeddings` is. A saved one is also a sentence-transformers model
    (`write_sentence_transformers_modules`): `SentenceTransformer(path)` returns the same vectors."""

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
        if self.config.normalize_embeddings:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        if push_to_hub:  # push_to_hub saves through this method into a folder it uploads whole
            hub = {key: kwargs.pop(key) for key in ("commit_message", "create_pr", "private") if key in kwargs}
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.save_pretrained(save_directory, *args, **kwargs)
            return self.push_to_hub(repo_id, token=kwargs.get("token"), **hub)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_sentence_transformers_modules(self, save_directory)


# torch.nn classes sentence-transformers' Dense module can name for a pooler activation.
SENTENCE_TRANSFORMERS_ACTIVATIONS = {
    name: f"torch.nn.modules.activation.{cls}"
    for name, cls in {"tanh": "Tanh", "gelu": "GELU", "relu": "ReLU", "sigmoid": "Sigmoid", "silu": "SiLU"}.items()
}


def write_sentence_transformers_modules(model: TrilmEncoderModel, save_directory) -> None:
    """Write sentence-transformers' description of `model`'s pooled output beside the checkpoint, in the
    format every sentence-transformers release reads: `modules.json` listing Transformer (this folder) ->
    Pooling (CLS or mean) -> Dense (the pooler, when there is one) -> Normalize (`normalize_embeddings`),
    with each module's configuration in its own folder."""
    config = model.config
    if model.pooler is not None and config.pooler_activation not in SENTENCE_TRANSFORMERS_ACTIVATIONS:
        return  # an activation sentence-transformers cannot name: the folder stays a transformers checkpoint
    modules = [("", "sentence_transformers.models.Transformer", None)]

    def add(kind: str, files: dict) -> None:
        modules.append((f"{len(modules)}_{kind}", f"sentence_transformers.models.{kind}", files))

    add("Pooling", {"config.json": {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": config.pooling == "cls",
        "pooling_mode_mean_tokens": config.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }})
    if model.pooler is not None:
        add("Dense", {
            "config.json": {
                "in_features": config.hidden_size,
                "out_features": config.hidden_size,
                "bias": True,
                "activation_function": SENTENCE_TRANSFORMERS_ACTIVATIONS[config.pooler_activation],
            },
            "model.safetensors": {
                "linear.weight": model.pooler.weight.detach().cpu().contiguous(),
                "linear.bias": model.pooler.bias.detach().cpu().contiguous(),
            },
        })
    if config.normalize_embeddings:
        add("Normalize", {"config.json": {}})
    old_modules = os.path.join(save_directory, "modules.json")
    if os.path.isfile(old_modules):  # a folder saved before: its module folders go, as old weight files do
        with open(old_modules) as f:
            for entry in json.load(f):
                if entry["path"] and os.path.isdir(os.path.join(save_directory, entry["path"])):
                    shutil.rmtree(os.path.join(save_directory, entry["path"]))
    for path, _, files in modules[1:]:
        os.makedirs(os.path.join(save_directory, path), exist_ok=True)
        for name, content in files.items():
            target = os.path.join(save_directory, path, name)
            if name.endswith(".safetensors"):
                save_file(content, target, metadata={"format": "pt"})
            else:
                with open(target, "w") as f:
                    json.dump(content, f, indent=2)
    entries = [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind, _) in enumerate(modules)]
    with open(os.path.join(save_directory, "modules.json"), "w") as f:
        json.dump(entries, f, indent=2)
    with open(os.path.join(save_directory, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": config.max_position_embeddings, "do_lower_case": False}, f, indent=2)


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
