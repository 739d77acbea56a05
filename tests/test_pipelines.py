"""transformers' pipelines on saved trilm checkpoints, and the helpers for the tasks v5 has no pipeline for."""

import pytest
import torch
from transformers import pipeline
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from trilm.modeling import (
    TrilmDecoderForCausalLM,
    TrilmEncoderForMaskedLM,
    TrilmEncoderForQuestionAnswering,
    TrilmEncoderForSequenceClassification,
    TrilmEncoderForTokenClassification,
    TrilmEncoderModel,
    TrilmSeq2SeqForConditionalGeneration,
)
from trilm.modeling.tasks import answer, summarize, translate

from .conftest import tiny_decoder_config, tiny_encoder_config, tiny_seq2seq_config

TEXT = "the cat sat on the mat"


def saved(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def encoder_checkpoint(tmp_path, cls, tokenizer):
    torch.manual_seed(0)
    config = tiny_encoder_config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id, num_labels=3
    )
    return saved(tmp_path, cls(config), tokenizer)


def test_fill_mask(tmp_path, wordpiece_tokenizer):
    fill = pipeline("fill-mask", model=encoder_checkpoint(tmp_path, TrilmEncoderForMaskedLM, wordpiece_tokenizer), top_k=3)
    results = fill("the cat sat on the [MASK]")
    assert len(results) == 3
    assert all(r["sequence"].startswith("the cat sat on the") and 0 < r["score"] < 1 for r in results)
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_feature_extraction(tmp_path, wordpiece_tokenizer):
    extract = pipeline("feature-extraction", model=encoder_checkpoint(tmp_path, TrilmEncoderModel, wordpiece_tokenizer))
    features = torch.tensor(extract(TEXT)[0])
    assert features.shape == (len(wordpiece_tokenizer(TEXT)["input_ids"]), 32)


def test_text_classification(tmp_path, wordpiece_tokenizer):
    classify = pipeline(
        "text-classification", model=encoder_checkpoint(tmp_path, TrilmEncoderForSequenceClassification, wordpiece_tokenizer), top_k=None
    )
    scores = classify([TEXT])[0]
    assert sorted(s["label"] for s in scores) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)


def test_token_classification(tmp_path, wordpiece_tokenizer):
    tag = pipeline("token-classification", model=encoder_checkpoint(tmp_path, TrilmEncoderForTokenClassification, wordpiece_tokenizer))
    entities = tag(TEXT)
    assert [e["word"] for e in entities] == TEXT.split()
    assert all(TEXT[e["start"] : e["end"]] == e["word"] for e in entities)


def test_text_generation(tmp_path, word_tokenizer):
    torch.manual_seed(0)
    config = tiny_decoder_config(
        vocab_size=len(word_tokenizer),
        pad_token_id=word_tokenizer.pad_token_id,
        bos_token_id=word_tokenizer.bos_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
    )
    generate = pipeline("text-generation", model=saved(tmp_path, TrilmDecoderForCausalLM(config), word_tokenizer))
    out = generate("the cat", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("the cat")
    assert len(word_tokenizer(out[0]["generated_text"])["input_ids"]) > 2


class PointingQA(torch.nn.Module):
    """A stand-in QA model whose start and end logits point at one token id (or at CLS when absent)."""

    def __init__(self, token_id: int):
        super().__init__()
        self.token_id = token_id
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        hits = (input_ids == self.token_id).float() * 10.0
        hits[:, 0] += 2.0  # the "no answer" CLS score
        return QuestionAnsweringModelOutput(start_logits=hits, end_logits=hits.clone())


def test_answer_finds_the_span_across_windows(wordpiece_tokenizer):
    context = " ".join(["the dog ran in the park"] * 12 + ["the cat sat on the mat"])
    model = PointingQA(wordpiece_tokenizer.convert_tokens_to_ids("mat"))
    result = answer(model, wordpiece_tokenizer, "where did the cat sit", context, max_length=32, stride=8)
    assert result["answer"] == "mat" and context[result["start"] : result["end"]] == "mat"
    assert 0.5 < result["score"] <= 1.0
    missing = answer(
        PointingQA(wordpiece_tokenizer.convert_tokens_to_ids("good")), wordpiece_tokenizer, "where", context,
        max_length=32, stride=8, handle_impossible_answer=True,
    )
    assert missing["answer"] == ""


def test_answer_on_a_tiny_trained_head_is_well_formed(wordpiece_tokenizer):
    torch.manual_seed(0)
    model = TrilmEncoderForQuestionAnswering(
        tiny_encoder_config(vocab_size=len(wordpiece_tokenizer), pad_token_id=0, mask_token_id=4, type_vocab_size=2)
    ).eval()
    result = answer(model, wordpiece_tokenizer, "where did the cat sit", TEXT, max_answer_length=3)
    assert set(result) == {"answer", "score", "start", "end"}
    assert TEXT[result["start"] : result["end"]] == result["answer"] and result["answer"]
    assert 0 < result["score"] <= 1 and len(result["answer"].split()) <= 3
    with pytest.raises(ValueError, match="non-empty"):
        answer(model, wordpiece_tokenizer, " ", TEXT)


@pytest.mark.parametrize("helper", [translate, summarize])
def test_text_to_text_helpers_decode_what_generate_produces(word_tokenizer, helper):
    torch.manual_seed(0)
    model = TrilmSeq2SeqForConditionalGeneration(
        tiny_seq2seq_config(
            vocab_size=len(word_tokenizer),
            pad_token_id=word_tokenizer.pad_token_id,
            eos_token_id=word_tokenizer.eos_token_id,
            decoder_start_token_id=word_tokenizer.pad_token_id,
        )
    ).eval()
    texts = ["the cat sat on the mat", "a dog ran"]
    outputs = helper(model, word_tokenizer, texts, num_beams=2, max_new_tokens=6)
    assert isinstance(outputs, list) and len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    inputs = word_tokenizer(texts, padding=True, return_tensors="pt")
    expected = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], num_beams=2, max_new_tokens=6
    )
    assert outputs == word_tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert helper(model, word_tokenizer, texts[0], num_beams=2, max_new_tokens=6) == outputs[0]
