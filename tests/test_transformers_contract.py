"""What transformers' own tooling expects of the model classes, by feature: seq2seq embeddings and gradient
checkpointing, the base classes' method signatures (get_encoder, the exporter), tensor-parallel plans and a TP
run, and the cache under both of its names (transformers 5.24 renamed `past_key_values` to `cache`)."""

import inspect
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.distributed.tensor_parallel import verify_tp_plan

import trilm.modeling
from trilm.modeling import TrilmDecoderForCausalLM, TrilmSeq2SeqForConditionalGeneration
from trilm.modeling.compat import CACHE_NAME, output_cache

from .conftest import tiny_decoder_config, tiny_seq2seq_config

TRILM_ROOT = Path(trilm.modeling.__file__).resolve().parents[1]
SOURCE = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))


def seq2seq(**overrides) -> TrilmSeq2SeqForConditionalGeneration:
    torch.manual_seed(0)
    return TrilmSeq2SeqForConditionalGeneration(tiny_seq2seq_config(**overrides)).eval()


# --------------------------------------------------------------------- seq2seq: the shared embedding
def test_seq2seq_checkpoint_without_shared_embedding_reports_it_missing_and_still_runs(tmp_path):
    seq2seq().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights = {name: tensor for name, tensor in weights.items() if not name.endswith("shared.weight")}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model, info = TrilmSeq2SeqForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert "model.shared.weight" in info["missing_keys"]
    assert all(not p.is_meta for p in model.parameters())
    embeddings = model.model
    assert embeddings.encoder.embed_tokens.weight is embeddings.shared.weight
    assert embeddings.decoder.embed_tokens.weight is embeddings.shared.weight
    assert torch.isfinite(model(input_ids=SOURCE, labels=SOURCE).loss)


def test_seq2seq_embeddings_stay_tied_through_save_and_load(tmp_path):
    original = seq2seq()
    original.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert not any(name.endswith("embed_tokens.weight") for name in saved), "tied copies are not saved"
    loaded = TrilmSeq2SeqForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.model.encoder.embed_tokens.weight is loaded.model.shared.weight
    assert loaded.lm_head.weight is loaded.model.shared.weight
    with torch.no_grad():
        assert torch.equal(original(input_ids=SOURCE, labels=SOURCE).logits, loaded(input_ids=SOURCE, labels=SOURCE).logits)


def test_seq2seq_decoder_without_encoder_states_says_what_it_needs():
    model = seq2seq()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model.model.decoder(input_ids=SOURCE)
    encoder_states = model.model.encoder(input_ids=SOURCE).last_hidden_state
    assert model.model.decoder(input_ids=SOURCE, encoder_hidden_states=encoder_states).last_hidden_state.shape == (2, 9, 32)


# ------------------------------------------------------------ seq2seq: gradient checkpointing
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_seq2seq_gradient_checkpointing_matches_plain_gradients(use_reentrant):
    grads = []
    for checkpointing in (False, True):
        model = seq2seq().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model(input_ids=SOURCE, labels=SOURCE).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    # The encoder's gradients flow back through the checkpointed decoder blocks' cross-attention.
    assert any(name.startswith("model.encoder.layers.0.") for name in grads[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


# ------------------------------------------------- transformers' API: base signatures, encoder, export
def _overrides():
    # In a fixed order: pytest-xdist's workers must collect the same tests (a set's order changes with the process).
    classes = {cls for _, cls in inspect.getmembers(trilm.modeling, inspect.isclass) if issubclass(cls, PreTrainedModel)}
    for cls in sorted(classes, key=lambda cls: cls.__name__):
        for name, method in vars(cls).items():
            if name.startswith("__") or not callable(method):
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.startswith("transformers") and callable(getattr(base, name, None)):
                    yield pytest.param(cls, name, getattr(base, name), id=f"{cls.__name__}.{name}")
                    break


@pytest.mark.parametrize("cls, name, base_method", list(_overrides()))
def test_overridden_methods_accept_every_argument_of_the_base_method(cls, name, base_method):
    ours = inspect.signature(getattr(cls, name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values()):
        return
    missing = [p for p in inspect.signature(base_method).parameters if p not in ours and p not in ("args", "kwargs")]
    assert not missing, f"{cls.__name__}.{name} drops the base arguments {missing}"


def test_get_encoder_takes_modality_and_finds_the_encoder():
    model = seq2seq()
    assert model.get_encoder() is model.model.encoder
    assert model.get_encoder(modality=None) is model.model.encoder
    assert model.model.get_encoder(modality=None) is model.model.encoder


def test_seq2seq_exports_for_generation_with_transformers_exporter():
    from transformers.exporters import DynamoExporter
    from transformers.exporters.configs import DynamoConfig

    model = seq2seq()
    exported = DynamoExporter().export_for_generation(
        model,
        {"input_ids": SOURCE[:1], "attention_mask": torch.ones_like(SOURCE[:1])},
        DynamoConfig(dynamic=False),
        generation_config=GenerationConfig(max_new_tokens=3, do_sample=False, decoder_start_token_id=0),
    )
    assert {"prefill", "decode"} <= set(exported.components), sorted(exported.components)


# ------------------------------------------------------------------------------ tensor parallelism
@pytest.mark.parametrize("mlp_type", ["gated", "plain"])
def test_tensor_parallel_plan_names_only_modules_that_exist(mlp_type, transformers_logs):
    model = TrilmDecoderForCausalLM(tiny_decoder_config(mlp_type=mlp_type))
    assert model._tp_plan, "the decoder has a tensor-parallel plan"
    verify_tp_plan(list(model.state_dict()), model._tp_plan)
    assert "were not sharded" in transformers_logs.text  # the norms and embeddings: the capture works
    assert "not applied" not in transformers_logs.text


@pytest.mark.parametrize("tied", [True, False])
def test_seq2seq_lm_under_tensor_parallelism_gives_the_unsharded_logits(tmp_path, tied):
    """Two CPU ranks over gloo, as transformers' own TP tests run: the tied head and the shared embedding are
    sharded together (vocabulary 100 splits in two)."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file as save_tensors

    model = seq2seq(vocab_size=100, tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.shared.weight) is tied
    inputs = {"input_ids": SOURCE % 100, "decoder_input_ids": SOURCE[:, :5] % 100}
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    save_tensors({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    save_tensors({"logits": expected.contiguous()}, tmp_path / "expected.safetensors")
    script = Path(__file__).parent / "tp_seq2seq.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert (tmp_path / "tp.json").is_file(), result.stderr[-3000:]
    report = json.loads((tmp_path / "tp.json").read_text())
    assert "lm_head" in report["sharded"] and "model.shared" in report["sharded"]  # both or neither: both
    assert report["max_diff"] <= 1e-5


# ------------------------------------------------------------- the cache under both of its names
def test_forward_takes_the_cache_as_cache_or_past_key_values():
    torch.manual_seed(0)
    model = TrilmDecoderForCausalLM(tiny_decoder_config()).eval()
    x = SOURCE[:1]
    full = model(x).logits
    with torch.no_grad():
        for name in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            model(x[:, :5], use_cache=True, **{name: cache})
            assert cache.get_seq_length() == 5, name
            step = model(x[:, 5:6], use_cache=True, **{name: cache}).logits
            assert torch.allclose(step[:, -1], full[:, 5], atol=1e-5), name
    with pytest.raises(ValueError, match="once"):
        model(x, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))
    assert isinstance(output_cache(model(x, use_cache=True)), DynamicCache)
    assert CACHE_NAME in model(x, use_cache=True)


def test_past_key_values_raises_one_future_warning_naming_cache_with_outputs_unchanged():
    """As Llama's `deprecate_kwarg` does since transformers 5.24, for the decoder and the seq2seq model; on 5.23,
    where `past_key_values` is the current name, nothing warns."""
    torch.manual_seed(0)
    for model in (TrilmDecoderForCausalLM(tiny_decoder_config()).eval(), seq2seq().eval()):
        inputs = {"input_ids": SOURCE[:1, :5]}
        if model.config.is_encoder_decoder:
            inputs["decoder_input_ids"] = SOURCE[:1, :3]
        outputs = {}
        for name in ("cache", "past_key_values"):
            with warnings.catch_warnings(record=True) as record, torch.no_grad():
                warnings.simplefilter("always")
                outputs[name] = model(**inputs, use_cache=True, **{name: cache_for(model)}).logits
            future = [str(w.message) for w in record if issubclass(w.category, FutureWarning)]
            if name == "cache" or CACHE_NAME == "past_key_values":
                assert future == []
            else:
                assert len(future) == 1 and "`past_key_values` is deprecated" in future[0] and "Use `cache` instead" in future[0]
        assert torch.equal(outputs["cache"], outputs["past_key_values"])


def cache_for(model):
    from transformers.cache_utils import EncoderDecoderCache

    if model.config.is_encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
    return DynamicCache(config=model.config)


def test_generate_decodes_with_the_cache():
    """generate() passes the cache under the installed transformers' name; a forward that swallowed it would
    decode every step from scratch and see a cache that never grows."""
    torch.manual_seed(0)
    model = TrilmDecoderForCausalLM(tiny_decoder_config()).eval()
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append((kwargs["input_ids"].shape[1], cache.get_seq_length() if cache is not None else None))
        return forward(*args, **kwargs)

    model.forward = spy
    model.generate(SOURCE[:1, :4], max_new_tokens=3, do_sample=False)
    assert seen == [(4, 0), (1, 4), (1, 5)]


def _trilm_warnings(record) -> list[str]:
    return [
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
        for w in record
        if issubclass(w.category, (FutureWarning, DeprecationWarning)) and Path(w.filename).resolve().is_relative_to(TRILM_ROOT)
        and "/tests/" not in w.filename
    ]


def test_no_deprecation_warning_comes_from_trilm_in_forward_generate_and_training(transformers_logs):
    torch.manual_seed(0)
    models = [TrilmDecoderForCausalLM(tiny_decoder_config()), seq2seq()]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for model in models:
            model.eval()
            with torch.no_grad():
                model(input_ids=SOURCE, attention_mask=torch.ones_like(SOURCE), use_cache=True)
            model.generate(SOURCE, attention_mask=torch.ones_like(SOURCE), max_new_tokens=3, do_sample=False)
            model.generate(SOURCE, attention_mask=torch.ones_like(SOURCE), max_new_tokens=3, num_beams=2, do_sample=False)
            model.train()
            model(input_ids=SOURCE, labels=SOURCE).loss.backward()
    assert not _trilm_warnings(record)
    assert "deprecated" not in transformers_logs.text.lower()
