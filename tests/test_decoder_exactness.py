"""The decoder family against transformers' Llama, and against itself under caches, padding, attention
backends, gradient checkpointing and packing."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

from trilm.modeling import TrilmDecoderForCausalLM, TrilmDecoderForSequenceClassification, TrilmDecoderModel
from trilm.modeling.interop import from_transformers, to_transformers

from .conftest import assert_checkpointing_keeps_gradients, tiny_decoder_config


def llama(tie: bool, cls=LlamaForCausalLM):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_theta=1000.0,
    )
    return cls(config).eval()


def causal_lm(**overrides) -> TrilmDecoderForCausalLM:
    torch.manual_seed(0)
    return TrilmDecoderForCausalLM(tiny_decoder_config(**overrides)).eval()


def tokens(batch=2, length=12, seed=1):
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- vs Llama
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_converted_llama_gives_same_logits_and_greedy_generation(tie):
    reference = llama(tie)
    ours = from_transformers(reference).eval()
    assert isinstance(ours, TrilmDecoderForCausalLM)
    assert ours.config.num_key_value_heads == 2 and ours.config.tie_word_embeddings == tie
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    x = tokens()
    with torch.no_grad():
        assert (ours(x).logits - reference(x).logits).abs().max() <= 1e-4
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x[:, :4], **kwargs), reference.generate(x[:, :4], **kwargs))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_to_transformers_round_trips_to_identical_weights(tie):
    reference = llama(tie)
    back = to_transformers(from_transformers(reference))
    assert type(back) is LlamaForCausalLM
    before, after = reference.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_llama_sequence_classification_converts_both_ways_with_the_same_scores():
    """Reward models and classifiers: the score head reads the last non-pad token on both sides."""
    torch.manual_seed(0)
    reference = llama(False, cls=LlamaForSequenceClassification)
    reference.config.id2label, reference.config.label2id = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
    ours = from_transformers(reference).eval()
    assert type(ours) is TrilmDecoderForSequenceClassification and ours.config.id2label == {0: "bad", 1: "good"}
    x = tokens()
    x[0, 8:] = 0  # right padding in the first row: the score is read at position 7
    mask = (x != 0).long()
    with torch.no_grad():
        assert (ours(x, attention_mask=mask).logits - reference(x, attention_mask=mask).logits).abs().max() <= 1e-5
        back = to_transformers(ours).eval()
        assert type(back) is LlamaForSequenceClassification
        assert (back(x, attention_mask=mask).logits - ours(x, attention_mask=mask).logits).abs().max() <= 1e-5
    assert all(torch.equal(value, back.state_dict()[key]) for key, value in reference.state_dict().items())


def test_base_llama_model_converts_to_the_base_decoder():
    reference = llama(False, cls=LlamaModel)
    ours = from_transformers(reference).eval()
    assert type(ours) is TrilmDecoderModel
    x = tokens()
    with torch.no_grad():
        diff = (ours(x).last_hidden_state - reference(x).last_hidden_state).abs().max()
    assert diff <= 1e-4


def test_unsupported_models_and_inexpressible_configs_raise():
    with pytest.raises(ValueError, match="supports"):
        from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="norm_position"):
        to_transformers(causal_lm(norm_position="post"))


# ------------------------------------------------------------------------------ vs Qwen2 and Qwen3
def qwen(kind: str, cls_name: str = "ForCausalLM", **overrides):
    """A tiny random Qwen2 (biased q/k/v, unbiased o) or Qwen3 (per-head q/k RMSNorm) of transformers, its biases
    and norm weights random too, so that the comparison sees them."""
    import transformers

    torch.manual_seed(0)
    config_class = getattr(transformers, f"{kind}Config")
    values = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, **overrides)
    if kind == "Qwen3":
        values["head_dim"] = 16  # Qwen3's head_dim is its own field (hidden / heads = 8 here)
    model = getattr(transformers, f"{kind}{cls_name}")(config_class(**values)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                parameter.normal_(0, 0.5 if name.endswith("bias") else 1.0)
    return model


@pytest.mark.parametrize("kind", ["Qwen2", "Qwen3"])
def test_qwen_converts_both_ways_with_the_same_logits(kind):
    reference = qwen(kind)
    ours = from_transformers(reference).eval()
    assert isinstance(ours, TrilmDecoderForCausalLM)
    assert (ours.config.qk_norm, ours.config.attention_output_bias) == ((True, None) if kind == "Qwen3" else (False, False))
    x = tokens()
    with torch.no_grad():
        assert (ours(x).logits - reference(x).logits).abs().max() <= 1e-5
        back = to_transformers(ours).eval()
        assert type(back) is type(reference) and (back(x).logits - reference(x).logits).abs().max() <= 1e-5
    assert all(torch.equal(value, back.state_dict()[key]) for key, value in reference.state_dict().items())
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x[:, :4], **kwargs), reference.generate(x[:, :4], **kwargs))


@pytest.mark.parametrize("kind", ["Qwen2", "Qwen3"])
def test_qwen_sequence_classification_converts_both_ways_with_the_same_scores(kind):
    reference = qwen(kind, "ForSequenceClassification")
    ours = from_transformers(reference).eval()
    assert type(ours) is TrilmDecoderForSequenceClassification
    x = tokens()
    x[0, 8:] = 0
    mask = (x != 0).long()
    with torch.no_grad():
        assert (ours(x, attention_mask=mask).logits - reference(x, attention_mask=mask).logits).abs().max() <= 1e-5
        back = to_transformers(ours).eval()
        assert type(back) is type(reference) and (back(x, attention_mask=mask).logits - ours(x, attention_mask=mask).logits).abs().max() <= 1e-5


def test_a_qwen_feature_trilm_cannot_express_is_named():
    with pytest.raises(ValueError, match="use_sliding_window=True"):
        from_transformers(qwen("Qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0))
    with pytest.raises(ValueError, match="no equivalent of norm_type='layernorm'"):  # q/k-normed with LayerNorm: no Qwen3
        to_transformers(causal_lm(qk_norm=True, norm_type="layernorm"))


# ---------------------------------------------------------------------------------- self-consistency
ARCHITECTURES = {
    "modern": {},
    "classic": dict(
        norm_type="layernorm",
        norm_position="post",
        position_embedding_type="learned",
        mlp_type="plain",
        hidden_act="gelu",
        attention_bias=True,
        mlp_bias=True,
        embedding_norm=True,
    ),
    "sinusoidal": dict(position_embedding_type="sinusoidal", scale_embedding=True),
    "mha": dict(num_key_value_heads=4),
    "qwen": dict(qk_norm=True, attention_bias=True, attention_output_bias=False),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_incremental_decoding_with_cache_equals_full_forward(arch):
    model, x = causal_lm(**ARCHITECTURES[arch]), tokens(length=10)
    with torch.no_grad():
        full = model(x).logits
        cache = DynamicCache(config=model.config)
        prefix = model(x[:, :6], past_key_values=cache, use_cache=True)
        steps = [prefix.logits]
        for i in range(6, 10):
            steps.append(model(x[:, i : i + 1], past_key_values=cache, use_cache=True).logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_forward_with_use_cache_returns_a_cache_that_continues_the_sequence():
    model, x = causal_lm(), tokens(length=8)
    with torch.no_grad():
        first = model(x[:, :5], use_cache=True)
        assert isinstance(first.past_key_values, DynamicCache)
        rest = model(x[:, 5:], past_key_values=first.past_key_values).logits
        assert torch.allclose(rest, model(x).logits[:, 5:], atol=1e-5)


def test_no_cache_is_created_while_training():
    model = causal_lm().train()
    assert model(tokens(), use_cache=True).past_key_values is None


def test_static_and_dynamic_caches_generate_the_same_tokens():
    model, x = causal_lm(), tokens(length=5)
    kwargs = dict(max_new_tokens=12, do_sample=False)
    dynamic = model.generate(x, **kwargs)
    static = model.generate(x, cache_implementation="static", **kwargs)
    assert dynamic.shape == (2, 17)
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("arch", ["modern", "classic"])
def test_left_padded_batch_generates_per_row_what_each_prompt_generates_alone(arch):
    model = causal_lm(**ARCHITECTURES[arch])
    prompts = [tokens(1, 7, seed=3)[0], tokens(1, 4, seed=4)[0]]
    kwargs = dict(max_new_tokens=8, do_sample=False)
    alone = [model.generate(p[None], **kwargs)[0, len(p) :] for p in prompts]
    width = max(len(p) for p in prompts)
    input_ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    attention_mask = (torch.arange(width)[None] >= torch.tensor([[width - len(p)] for p in prompts])).long()
    batched = model.generate(input_ids, attention_mask=attention_mask, **kwargs)[:, width:]
    for row, expected in zip(batched, alone):
        assert torch.equal(row, expected)


def test_right_padding_does_not_change_the_logits_of_real_tokens():
    model, x = causal_lm(), tokens(length=9)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits
        alone = model(x[1:, :6]).logits
    assert torch.allclose(padded[1, :6], alone[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_attention_backends_agree_with_eager(backend):
    eager = causal_lm()
    other = causal_lm()
    eager.set_attn_implementation("eager")
    other.set_attn_implementation(backend)
    x = tokens(length=10)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.allclose(eager(x).logits, other(x).logits, atol=1e-5)
        # Pad positions attend to nothing and their outputs differ by kernel; real tokens must agree.
        real = mask.bool()
        padded = eager(x, attention_mask=mask).logits[real], other(x, attention_mask=mask).logits[real]
        assert torch.allclose(*padded, atol=1e-5)


def test_gradient_checkpointing_leaves_gradients_unchanged():
    x = tokens(length=10)
    assert_checkpointing_keeps_gradients(causal_lm, {"input_ids": x, "labels": x})


@pytest.mark.parametrize("arch", ["modern", "classic"])
def test_packed_batch_gives_per_sequence_logits_of_the_sequences_alone(arch):
    model = causal_lm(**ARCHITECTURES[arch])
    first, second = tokens(1, 7, seed=5), tokens(1, 5, seed=6)
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(7), torch.arange(5)])[None]
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            logits = model(packed, position_ids=position_ids).logits
            alone = [model(first).logits, model(second).logits]
        assert torch.allclose(logits[:, :7], alone[0], atol=1e-5)
        assert torch.allclose(logits[:, 7:], alone[1], atol=1e-5)


def test_hidden_states_attentions_and_tuple_outputs():
    model, x = causal_lm(), tokens()
    model.set_attn_implementation("eager")
    out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[0], model.model.embed_tokens(x))
    assert len(out.attentions) == model.config.num_hidden_layers
    assert out.attentions[0].shape == (2, 4, 12, 12)
    as_tuple = model(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)


def test_logits_to_keep_returns_only_the_last_positions():
    model, x = causal_lm(), tokens()
    with torch.no_grad():
        full, last = model(x).logits, model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 97)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_learned_positions_beyond_the_maximum_raise_a_clear_error():
    model = causal_lm(position_embedding_type="learned", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(tokens(1, 17))
    assert model(tokens(1, 16)).logits.shape == (1, 16, 97)


def test_bfloat16_on_cpu_runs_eager_attention_and_matches_float32_sdpa(monkeypatch):
    from trilm.modeling import blocks

    model = causal_lm()
    x = tokens(length=10)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        reference = model(x, attention_mask=mask).logits
        chosen = []
        interface = blocks.Attention._attention_interface
        monkeypatch.setattr(blocks.Attention, "_attention_interface", lambda self, q: chosen.append(interface(self, q)) or chosen[-1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for kwargs in ({}, {"attention_mask": mask}):
                logits = model(x, **kwargs).logits.float()
                expected = reference if kwargs else model(x).logits
                real = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
                assert (logits[real] - expected[real]).abs().max() < 0.02
        # Under autocast RoPE leaves q in float32, yet the attention runs in bfloat16: eager it is.
        assert chosen and all(f is blocks.eager_attention_forward for f in chosen)
        chosen.clear()
        model.to(torch.bfloat16)(x)
        assert chosen and all(f is blocks.eager_attention_forward for f in chosen)
        model.float()(x)
        assert chosen[-1] is not blocks.eager_attention_forward  # float32: the configured sdpa


@pytest.mark.parametrize("bad_id", [97, 500, -1])
def test_token_ids_outside_the_vocabulary_raise_a_clear_error(bad_id):
    model = causal_lm()
    with pytest.raises(ValueError, match="outside this model's vocabulary of 97 tokens"):
        model(torch.tensor([[5, bad_id, 7]]))


def test_rope_table_equals_computing_the_rotation_and_falls_back_past_its_end(monkeypatch):
    from trilm.modeling import blocks

    rotary = causal_lm(rope_parameters={"rope_type": "default", "rope_theta": 1000.0}).model.rotary_emb
    x = torch.zeros(1)
    inside, beyond = torch.tensor([[0, 5, 63], [7, 8, 9]]), torch.tensor([[62, 63, 64, 100]])
    for positions in (inside, beyond):  # max_position_embeddings=64: the second batch runs past the table
        cos, sin = rotary(x, positions)
        table_cos, table_sin = rotary.rotation(x, positions)
        assert torch.equal(table_cos, cos.unsqueeze(2)) and torch.equal(table_sin, blocks.fold_sign(sin).unsqueeze(2))
    # A smaller table cap moves the fallback point; the frequencies changing in place rebuild the table.
    monkeypatch.setattr(blocks, "ROPE_TABLE_POSITIONS", 8)
    rotary.inv_freq.mul_(0.5)
    first = torch.tensor([[0, 3, 7]])
    cos, _ = rotary(x, first)
    assert torch.equal(rotary.rotation(x, first)[0], cos.unsqueeze(2))
    assert rotary._table[0].shape[0] == 8 and rotary._past_table(inside)
    rotary.to(torch.bfloat16)  # a new inv_freq tensor: the table follows it
    cos, _ = rotary(x, first)
    assert torch.equal(rotary.rotation(x, first)[0], cos.unsqueeze(2))
