"""The encoder family against transformers' BERT, and against itself under padding, backends and
checkpointing; its heads, losses, label checks and checkpoints."""

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from trilm.modeling import (
    TrilmEncoderForMaskedLM,
    TrilmEncoderForQuestionAnswering,
    TrilmEncoderForSequenceClassification,
    TrilmEncoderForTokenClassification,
    TrilmEncoderModel,
)
from trilm.modeling.interop import from_transformers, to_transformers

from .conftest import assert_checkpointing_keeps_gradients, tiny_encoder_config

X = torch.randint(5, 97, (2, 9), generator=torch.Generator().manual_seed(0))
TOKEN_TYPES = torch.tensor([[0] * 5 + [1] * 4, [0] * 6 + [1] * 3])
MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])


def bert(cls, num_labels=3):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        num_labels=num_labels,
    )
    return cls(config).eval()


def encoder(cls, **overrides):
    torch.manual_seed(0)
    return cls(tiny_encoder_config(**overrides)).eval()


BERT_CLASSES = {
    BertForMaskedLM: TrilmEncoderForMaskedLM,
    BertForSequenceClassification: TrilmEncoderForSequenceClassification,
    BertForTokenClassification: TrilmEncoderForTokenClassification,
    BertForQuestionAnswering: TrilmEncoderForQuestionAnswering,
    BertModel: TrilmEncoderModel,
}


@pytest.mark.parametrize("bert_class", BERT_CLASSES, ids=lambda c: c.__name__)
def test_converted_bert_gives_the_same_outputs_and_round_trips(bert_class):
    reference = bert(bert_class, num_labels=2 if bert_class is BertForQuestionAnswering else 3)
    ours = from_transformers(reference).eval()
    assert type(ours) is BERT_CLASSES[bert_class]
    with torch.no_grad():
        expected = reference(X, attention_mask=MASK, token_type_ids=TOKEN_TYPES)
        actual = ours(X, attention_mask=MASK, token_type_ids=TOKEN_TYPES)
    compared = [k for k in expected.keys() if torch.is_tensor(expected[k])]
    assert compared
    for key in compared:
        assert (expected[key] - actual[key]).abs().max() <= 1e-4, key
    back = to_transformers(ours)
    assert type(back) is bert_class
    before, after = reference.state_dict(), back.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_pretrained_bert_folder_loads_trains_and_saves_as_trilm(tmp_path):
    bert(BertModel).save_pretrained(tmp_path / "bert")  # stands in for any BertModel checkpoint on disk
    model = from_transformers(BertModel.from_pretrained(tmp_path / "bert"))
    classifier = TrilmEncoderForSequenceClassification(model.config)
    classifier.model.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    labels = torch.tensor([0, 2])
    losses = []
    for _ in range(5):
        loss = classifier(X, attention_mask=MASK, token_type_ids=TOKEN_TYPES, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    classifier.save_pretrained(tmp_path / "trilm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "trilm")
    assert type(reloaded) is TrilmEncoderForSequenceClassification
    classifier.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(X, token_type_ids=TOKEN_TYPES).logits, classifier(X, token_type_ids=TOKEN_TYPES).logits)


ARCHITECTURES = {
    "modern": {},
    "bert_like": dict(
        norm_position="post",
        position_embedding_type="learned",
        mlp_type="plain",
        attention_bias=True,
        mlp_bias=True,
        norm_bias=True,
        type_vocab_size=2,
        pooler_activation="tanh",
    ),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_does_not_change_outputs_of_real_tokens(arch):
    model = encoder(TrilmEncoderModel, **ARCHITECTURES[arch])
    with torch.no_grad():
        padded = model(X, attention_mask=MASK).last_hidden_state
        alone = model(X[1:, :6]).last_hidden_state
    assert torch.allclose(padded[1, :6], alone[0], atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooled_embeddings_agree_alone_and_in_a_padded_batch(pooling):
    model = encoder(TrilmEncoderModel, pooling=pooling)
    with torch.no_grad():
        batch = model(X, attention_mask=MASK).pooler_output
        alone = model(X[1:, :6]).pooler_output
    assert batch.shape == (2, 32)
    assert torch.allclose(batch[1], alone[0], atol=1e-5)
    if pooling == "mean":
        assert not torch.allclose(batch[1], model(X[1:]).pooler_output[0], atol=1e-3)


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_attention_backends_agree_with_eager(backend):
    eager, other = encoder(TrilmEncoderModel), encoder(TrilmEncoderModel)
    eager.set_attn_implementation("eager")
    other.set_attn_implementation(backend)
    real = MASK.bool()
    with torch.no_grad():
        a, b = eager(X, attention_mask=MASK).last_hidden_state, other(X, attention_mask=MASK).last_hidden_state
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_checkpointing_keeps_gradients():
    assert_checkpointing_keeps_gradients(lambda: encoder(TrilmEncoderForMaskedLM), {"input_ids": X, "labels": X})


HEAD_LABELS = {
    TrilmEncoderForMaskedLM: lambda: {"labels": torch.where(torch.rand(2, 9, generator=torch.Generator().manual_seed(1)) < 0.3, X, -100)},
    TrilmEncoderForSequenceClassification: lambda: {"labels": torch.tensor([1, 2])},
    TrilmEncoderForTokenClassification: lambda: {"labels": torch.randint(0, 3, (2, 9))},
    TrilmEncoderForQuestionAnswering: lambda: {"start_positions": torch.tensor([1, 3]), "end_positions": torch.tensor([2, 5])},
}


@pytest.mark.parametrize("cls", HEAD_LABELS, ids=lambda c: c.__name__)
def test_every_head_computes_a_loss_and_backpropagates(cls):
    model = encoder(cls, num_labels=3).train()
    out = model(X, attention_mask=MASK, **HEAD_LABELS[cls]())
    assert out.loss.ndim == 0 and out.loss.item() > 0
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("num_labels", "problem_type", "labels"),
    [
        (1, "regression", torch.tensor([0.5, -1.0])),
        (3, "single_label_classification", torch.tensor([0, 2])),
        (3, "multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
    ],
)
def test_sequence_classification_follows_problem_type(num_labels, problem_type, labels):
    model = encoder(TrilmEncoderForSequenceClassification, num_labels=num_labels)
    loss = model(X, labels=labels).loss
    assert model.config.problem_type == problem_type
    logits = model(X).logits
    expected = {
        "regression": lambda: torch.nn.functional.mse_loss(logits.squeeze(), labels),
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(logits, labels),
    }[problem_type]()
    assert torch.allclose(loss, expected)


def test_labels_of_the_wrong_shape_raise():
    with pytest.raises(ValueError, match="labels has shape"):
        encoder(TrilmEncoderForSequenceClassification, num_labels=3)(X, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multi-label"):
        encoder(TrilmEncoderForSequenceClassification, num_labels=3, problem_type="multi_label_classification")(
            X, labels=torch.ones(2, 2)
        )
    with pytest.raises(ValueError, match="labels has shape"):
        encoder(TrilmEncoderForTokenClassification, num_labels=3)(X, labels=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has shape"):
        encoder(TrilmEncoderForMaskedLM)(X, labels=X[:, :4])


def test_question_answering_positions_out_of_range_raise():
    model = encoder(TrilmEncoderForQuestionAnswering)
    with pytest.raises(ValueError, match="start_positions"):
        model(X, start_positions=torch.tensor([1, 9]), end_positions=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="end_positions"):
        model(X, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([-1, 3]))


AUTO = {
    TrilmEncoderModel: AutoModel,
    TrilmEncoderForMaskedLM: AutoModelForMaskedLM,
    TrilmEncoderForSequenceClassification: AutoModelForSequenceClassification,
    TrilmEncoderForTokenClassification: AutoModelForTokenClassification,
    TrilmEncoderForQuestionAnswering: AutoModelForQuestionAnswering,
}


@pytest.mark.parametrize("cls", AUTO, ids=lambda c: c.__name__)
def test_every_head_round_trips_through_its_auto_class(tmp_path, cls):
    model = encoder(cls, num_labels=3, pooler_activation="tanh")
    model.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    reloaded = AUTO[cls].from_pretrained(tmp_path)
    assert type(reloaded) is cls
    with torch.no_grad():
        assert torch.equal(reloaded(X, attention_mask=MASK)[0], model(X, attention_mask=MASK)[0])
    half = AUTO[cls].from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half(X)[0].dtype == torch.bfloat16
    if cls is TrilmEncoderForMaskedLM:
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_sparse_prediction_gives_the_same_loss_and_gradients_in_training():
    labels = torch.where(torch.rand(2, 9, generator=torch.Generator().manual_seed(2)) < 0.3, X, -100)
    results = []
    for sparse in (False, True):
        model = encoder(TrilmEncoderForMaskedLM, sparse_prediction=sparse).train()
        out = model(X, attention_mask=MASK, labels=labels)
        out.loss.backward()
        results.append((out, model.model.embed_tokens.weight.grad.clone()))
    (dense, dense_grad), (sparse, sparse_grad) = results
    assert torch.allclose(dense.loss, sparse.loss, atol=1e-6)
    assert torch.allclose(dense_grad, sparse_grad, atol=1e-6)
    assert dense.logits.shape == (2, 9, 97) and sparse.logits.shape == (int((labels != -100).sum()), 97)
    model = encoder(TrilmEncoderForMaskedLM, sparse_prediction=True).eval()  # inference keeps every position
    assert model(X, labels=labels).logits.shape == (2, 9, 97)


def test_a_grouped_query_encoder_has_no_bert_equivalent():
    """BERT has one key/value head per query head: converting a GQA encoder says so instead of failing
    inside load_state_dict."""
    gqa = from_transformers(bert(BertForMaskedLM))
    gqa.config.num_key_value_heads = 2
    with pytest.raises(ValueError, match="num_key_value_heads=2; it needs num_key_value_heads=4"):
        to_transformers(gqa)
