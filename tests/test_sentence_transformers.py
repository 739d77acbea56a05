"""sentence-transformers: a saved trilm encoder is a SentenceTransformer with the same vectors as its pooled
output, and a sentence-transformers BERT converts to trilm keeping its pooling and normalisation."""

import json
import os
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as st_modules
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from trilm.modeling import TrilmEncoderModel
from trilm.modeling.interop import from_sentence_transformers
from trilm.recipes.common.models import ModelArguments, load_model

from .conftest import tiny_encoder_config

TEXTS = ["the cat sat on the mat", "a dog", "good answer here and there and here"]


def pooled(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


def encode(path, **kwargs) -> torch.Tensor:
    return SentenceTransformer(str(path), device="cpu", **kwargs).encode(TEXTS, convert_to_tensor=True)


@pytest.mark.parametrize(
    "pooling, modules",
    [
        (dict(pooling="mean", normalize_embeddings=True), ["Transformer", "Pooling", "Normalize"]),
        (dict(pooling="cls", pooler_activation="tanh"), ["Transformer", "Pooling", "Dense"]),
        (dict(pooling="cls"), ["Transformer", "Pooling"]),
    ],
)
def test_a_saved_encoder_gives_sentence_transformers_its_pooled_output(tmp_path, wordpiece_tokenizer, pooling, modules):
    torch.manual_seed(0)
    model = TrilmEncoderModel(tiny_encoder_config(type_vocab_size=2, **pooling))
    model.save_pretrained(tmp_path / "enc")
    wordpiece_tokenizer.save_pretrained(tmp_path / "enc")
    listed = json.loads((tmp_path / "enc" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in listed] == modules
    torch.testing.assert_close(encode(tmp_path / "enc"), pooled(model, wordpiece_tokenizer), rtol=0, atol=1e-6)
    if pooling.get("normalize_embeddings"):
        torch.testing.assert_close(pooled(model, wordpiece_tokenizer).norm(dim=-1), torch.ones(len(TEXTS)))
    # Saved again into the same folder with other pooling: no module folder of the first save stays listed.
    TrilmEncoderModel(tiny_encoder_config(type_vocab_size=2, pooling="mean")).save_pretrained(tmp_path / "enc")
    assert [m["path"] for m in json.loads((tmp_path / "enc" / "modules.json").read_text())] == ["", "1_Pooling"]
    assert not (tmp_path / "enc" / "2_Dense").exists() and not (tmp_path / "enc" / "2_Normalize").exists()


def sentence_transformers_bert(folder, tokenizer, layout: str, pooling_mode: str = "mean", dense: bool = False):
    """A tiny BERT sentence-transformers folder (mean pooling + Normalize), saved by sentence-transformers
    itself ("saved") or written in the layout before sentence-transformers 6 ("legacy"), as most Hub ones are."""
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64))
    bert.save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    modules = [st_modules.Transformer(str(folder / "bert")), st_modules.Pooling(32, pooling_mode)]
    modules += [st_modules.Dense(32, 16)] if dense else []
    SentenceTransformer(modules=[*modules, st_modules.Normalize()], device="cpu").save(str(folder / "st"))
    if layout == "legacy":
        (folder / "st" / "modules.json").write_text(json.dumps([
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (path, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")])
        ]))
        (folder / "st" / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling_mode == "cls",
            "pooling_mode_mean_tokens": pooling_mode == "mean", "pooling_mode_max_tokens": pooling_mode == "max",
        }))
    return folder / "st"


@pytest.mark.parametrize("layout", ["saved", "legacy"])
def test_a_sentence_transformers_bert_converts_keeping_its_mean_pooling_and_normalisation(tmp_path, wordpiece_tokenizer, layout):
    folder = sentence_transformers_bert(tmp_path, wordpiece_tokenizer, layout)
    expected = encode(folder)
    model = from_sentence_transformers(str(folder))
    assert (model.config.pooling, model.config.normalize_embeddings, model.pooler) == ("mean", True, None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.testing.assert_close(pooled(model, tokenizer), expected, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path / "trilm")
    tokenizer.save_pretrained(tmp_path / "trilm")
    torch.testing.assert_close(encode(tmp_path / "trilm"), expected, rtol=0, atol=1e-5)
    # The recipes convert the same way: a classifier fine-tuned from the folder pools as the embedding does.
    classifier = load_model(ModelArguments(model_name_or_path=str(folder)), "encoder", tokenizer,
                            AutoModelForSequenceClassification, num_labels=2)
    assert (classifier.config.pooling, classifier.config.normalize_embeddings) == ("mean", True)
    torch.testing.assert_close(pooled(classifier.model, tokenizer), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "make, message",
    [
        (dict(pooling_mode="max"), "pools by 'max'"),
        (dict(dense=True), r"modules \['Transformer', 'Pooling', 'Dense', 'Normalize'\]"),
    ],
)
def test_sentence_transformers_models_trilm_cannot_express_are_refused(tmp_path, wordpiece_tokenizer, make, message):
    folder = sentence_transformers_bert(tmp_path, wordpiece_tokenizer, "saved", **make)
    with pytest.raises(ValueError, match=message):
        from_sentence_transformers(str(folder))


def test_from_sentence_transformers_refuses_a_folder_without_modules_json(tmp_path, wordpiece_tokenizer):
    folder = sentence_transformers_bert(tmp_path, wordpiece_tokenizer, "saved")
    with pytest.raises(ValueError, match="no modules.json"):
        from_sentence_transformers(str(folder.parent / "bert"))


def test_sentence_transformers_loads_a_trilm_encoder_where_trilm_cannot_be_imported(tmp_path, wordpiece_tokenizer):
    torch.manual_seed(0)
    model = TrilmEncoderModel(tiny_encoder_config(type_vocab_size=2, pooling="mean", normalize_embeddings=True))
    model.save_pretrained(tmp_path / "enc")
    wordpiece_tokenizer.save_pretrained(tmp_path / "enc")
    torch.save(pooled(model, wordpiece_tokenizer), tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.modules["trilm"] = None
from sentence_transformers import SentenceTransformer
model = SentenceTransformer({str(tmp_path / "enc")!r}, device="cpu", trust_remote_code=True)
vectors = model.encode({TEXTS!r}, convert_to_tensor=True)
torch.testing.assert_close(vectors, torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True), rtol=0, atol=1e-6)
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_push_to_hub_uploads_the_sentence_transformers_files(tmp_path, captured_uploads):
    model = TrilmEncoderModel(tiny_encoder_config(pooling="mean", normalize_embeddings=True))
    model.push_to_hub("someone/tiny-embedder")
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="someone/tiny-embedder-2")
    assert [c["repo_id"] for c in captured_uploads] == ["someone/tiny-embedder", "someone/tiny-embedder-2"]
    for commit in captured_uploads:
        assert {"modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "2_Normalize/config.json",
                "model.safetensors", "config.json", "modeling_trilm.py"} <= set(commit["files"])
    assert (tmp_path / "local" / "modules.json").is_file()
