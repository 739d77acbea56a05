"""The shared config vocabulary: defaults, validation with clear errors, serialisation."""

import json

import pytest

from trilm.configuration import TrilmDecoderConfig

from .conftest import tiny_decoder_config


def test_modern_defaults():
    config = TrilmDecoderConfig()
    assert (config.norm_type, config.norm_position, config.position_embedding_type, config.mlp_type) == (
        "rmsnorm",
        "pre",
        "rope",
        "gated",
    )
    assert config.num_key_value_heads == config.num_attention_heads
    assert config.head_dim == config.hidden_size // config.num_attention_heads
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


def test_auto_map_is_a_dict_naming_every_auto_class():
    config = tiny_decoder_config()
    assert isinstance(config.auto_map, dict)
    assert config.auto_map["AutoConfig"] == "configuration_trilm.TrilmDecoderConfig"
    assert config.auto_map["AutoModelForCausalLM"] == "modeling_trilm.TrilmDecoderForCausalLM"
    assert config.auto_map["AutoModelForSequenceClassification"] == "modeling_trilm.TrilmDecoderForSequenceClassification"


def test_save_and_reload_round_trips(tmp_path):
    config = tiny_decoder_config(norm_type="layernorm", position_embedding_type="learned", rope_theta=500000.0)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "trilm_decoder" and isinstance(saved["auto_map"], dict)
    reloaded = TrilmDecoderConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()


def test_rope_theta_reaches_rope_parameters():
    config = tiny_decoder_config(rope_theta=500000.0)
    assert config.rope_parameters["rope_theta"] == 500000.0
    scaled = tiny_decoder_config(rope_parameters={"rope_type": "linear", "factor": 2.0})
    assert scaled.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(mlp_type="moe"), "mlp_type"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(hidden_act="swishy"), "hidden_act"),
        (dict(vocab_size=-5), "vocab_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(intermediate_size=-1), "intermediate_size"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(head_dim=7, position_embedding_type="rope"), "head_dim"),
        (dict(attention_dropout=1.5), "attention_dropout"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(pad_token_id=500), "pad_token_id"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_decoder_config(**overrides)


def test_enum_error_lists_the_allowed_values():
    with pytest.raises(ValueError, match="'rmsnorm', 'layernorm'"):
        tiny_decoder_config(norm_type="batchnorm")


def test_explicit_head_dim_allows_heads_times_head_dim_other_than_hidden():
    config = tiny_decoder_config(hidden_size=30, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    assert config.head_dim == 8
