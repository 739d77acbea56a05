"""The encoder-decoder family against transformers' BART, and against itself under caches, padding,
backends and checkpointing; generation and checkpoints."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration, BartModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from trilm.modeling import TrilmSeq2SeqForConditionalGeneration, TrilmSeq2SeqModel
from trilm.modeling.interop import from_transformers, to_transformers

from .conftest import assert_checkpointing_keeps_gradients, tiny_seq2seq_config

SOURCE = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
SOURCE_MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
TARGET = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))


def bart(cls=BartForConditionalGeneration):
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=97,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=40,
    )
    model = cls(config).eval()
    if cls is BartForConditionalGeneration:
        model.final_logits_bias.normal_()  # checkpoints may carry a non-zero bias
    return model


def seq2seq(**overrides):
    torch.manual_seed(0)
    return TrilmSeq2SeqForConditionalGeneration(tiny_seq2seq_config(**overrides)).eval()


def test_converted_bart_gives_the_same_logits_and_generations():
    reference = bart()
    ours = from_transformers(reference).eval()
    assert type(ours) is TrilmSeq2SeqForConditionalGeneration
    with torch.no_grad():
        expected = reference(SOURCE, attention_mask=SOURCE_MASK, labels=TARGET)
        actual = ours(SOURCE, attention_mask=SOURCE_MASK, labels=TARGET)
    assert (expected.logits - actual.logits).abs().max() <= 1e-4
    assert torch.allclose(expected.loss, actual.loss, atol=1e-5)
    for kwargs in (dict(num_beams=1), dict(num_beams=3)):
        kwargs.update(max_new_tokens=8, do_sample=False, attention_mask=SOURCE_MASK)
        assert torch.equal(reference.generate(SOURCE, **kwargs), ours.generate(SOURCE, **kwargs)), kwargs


@pytest.mark.parametrize("cls", [BartForConditionalGeneration, BartModel], ids=lambda c: c.__name__)
def test_bart_round_trips_to_identical_weights(cls):
    reference = bart(cls)
    ours = from_transformers(reference)
    assert type(ours) is {BartForConditionalGeneration: TrilmSeq2SeqForConditionalGeneration, BartModel: TrilmSeq2SeqModel}[cls]
    back = to_transformers(ours)
    before, after = reference.state_dict(), back.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


ARCHITECTURES = {
    "modern": {},
    "bart_like": dict(
        norm_type="layernorm",
        norm_position="post",
        position_embedding_type="learned",
        position_offset=2,
        mlp_type="plain",
        hidden_act="gelu",
        attention_bias=True,
        mlp_bias=True,
        embedding_norm=True,
        lm_head_bias=True,
    ),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_incremental_decoding_with_cache_equals_a_full_decoder_forward(arch):
    model = seq2seq(**ARCHITECTURES[arch])
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(TARGET)
    with torch.no_grad():
        full = model(SOURCE, attention_mask=SOURCE_MASK, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(SOURCE, attention_mask=SOURCE_MASK)
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        steps = []
        for i in range(decoder_input_ids.shape[1]):
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=SOURCE_MASK,
                decoder_input_ids=decoder_input_ids[:, i : i + 1],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encoder_padding_does_not_change_the_outputs(arch):
    model = seq2seq(**ARCHITECTURES[arch])
    with torch.no_grad():
        padded = model(SOURCE, attention_mask=SOURCE_MASK, labels=TARGET)
        alone = model(SOURCE[1:, :6], labels=TARGET[1:])
    assert torch.allclose(padded.encoder_last_hidden_state[1, :6], alone.encoder_last_hidden_state[0], atol=1e-5)
    assert torch.allclose(padded.logits[1], alone.logits[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_attention_backends_agree_with_eager(backend):
    eager, other = seq2seq(), seq2seq()
    eager.set_attn_implementation("eager")
    other.set_attn_implementation(backend)
    with torch.no_grad():
        a = eager(SOURCE, attention_mask=SOURCE_MASK, labels=TARGET).logits
        b = other(SOURCE, attention_mask=SOURCE_MASK, labels=TARGET).logits
    assert torch.allclose(a, b, atol=1e-5)
    kwargs = dict(attention_mask=SOURCE_MASK, max_new_tokens=5, do_sample=False)
    assert torch.equal(eager.generate(SOURCE, **kwargs), other.generate(SOURCE, **kwargs))


def test_checkpointing_keeps_gradients():
    batch = {"input_ids": SOURCE, "attention_mask": SOURCE_MASK, "labels": TARGET}
    assert_checkpointing_keeps_gradients(seq2seq, batch)


def test_beam_search_sampling_and_encoder_outputs_reuse_through_generate():
    model = seq2seq()
    beams = model.generate(SOURCE, attention_mask=SOURCE_MASK, num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert beams.shape[0] == 4 and beams.shape[1] <= 7
    torch.manual_seed(0)
    sampled = model.generate(SOURCE, attention_mask=SOURCE_MASK, do_sample=True, top_p=0.9, top_k=20, max_new_tokens=6)
    assert sampled.shape[0] == 2 and (sampled[:, 0] == model.config.decoder_start_token_id).all()
    greedy = model.generate(SOURCE, attention_mask=SOURCE_MASK, max_new_tokens=6, do_sample=False)
    encoder_outputs = model.get_encoder()(SOURCE, attention_mask=SOURCE_MASK)
    reused = model.generate(encoder_outputs=encoder_outputs, attention_mask=SOURCE_MASK, max_new_tokens=6, do_sample=False)
    assert torch.equal(greedy, reused)


def test_missing_decoder_start_token_raises_a_clear_error():
    model = seq2seq(decoder_start_token_id=None, bos_token_id=None)
    model.generation_config.decoder_start_token_id = None
    model.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model.generate(SOURCE, max_new_tokens=3)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(SOURCE, labels=TARGET)


def test_labels_of_the_wrong_shape_raise():
    with pytest.raises(ValueError, match="labels has shape"):
        seq2seq()(SOURCE, decoder_input_ids=TARGET, labels=TARGET[:, :3])


@pytest.mark.parametrize(("cls", "auto"), [(TrilmSeq2SeqForConditionalGeneration, AutoModelForSeq2SeqLM), (TrilmSeq2SeqModel, AutoModel)])
def test_save_and_reload_through_the_auto_classes(tmp_path, cls, auto):
    torch.manual_seed(0)
    model = cls(tiny_seq2seq_config(lm_head_bias=True)).eval()
    model.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    reloaded = auto.from_pretrained(tmp_path)
    assert type(reloaded) is cls
    with torch.no_grad():
        assert torch.equal(reloaded(SOURCE, decoder_input_ids=TARGET)[0], model(SOURCE, decoder_input_ids=TARGET)[0])
    shared = reloaded.get_input_embeddings()
    base = reloaded.model if cls is TrilmSeq2SeqForConditionalGeneration else reloaded
    assert base.encoder.embed_tokens.weight is shared.weight and base.decoder.embed_tokens.weight is shared.weight
    half = auto.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half(SOURCE, decoder_input_ids=TARGET)[0].dtype == torch.bfloat16


def test_a_grouped_query_seq2seq_model_has_no_bart_equivalent():
    model = from_transformers(bart())
    model.config.num_key_value_heads = 2
    with pytest.raises(ValueError, match="BartConfig has no equivalent of num_key_value_heads=2"):
        to_transformers(model)
