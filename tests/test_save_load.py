"""Checkpoints: safetensors only, Auto-class reloads with identical outputs, bfloat16, tied weights, remote code."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from trilm.modeling import TrilmDecoderForCausalLM, TrilmDecoderForSequenceClassification, TrilmDecoderModel

from .conftest import tiny_decoder_config, tiny_encoder_config, tiny_seq2seq_config

X = torch.tensor([[5, 17, 33, 8, 9], [41, 9, 12, 70, 3]])


def saved_files(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize(
    ("cls", "auto"),
    [
        (TrilmDecoderForCausalLM, AutoModelForCausalLM),
        (TrilmDecoderForSequenceClassification, AutoModelForSequenceClassification),
        (TrilmDecoderModel, AutoModel),
    ],
)
def test_auto_class_reloads_identical_outputs_from_safetensors_only(tmp_path, cls, auto):
    torch.manual_seed(0)
    model = cls(tiny_decoder_config(num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    files = saved_files(tmp_path)
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    reloaded = auto.from_pretrained(tmp_path)
    assert type(reloaded) is cls and not reloaded.training
    with torch.no_grad():
        a, b = model(X), reloaded(X)
    assert torch.equal(a[0], b[0])


def test_tied_weights_stay_tied_after_reload(tmp_path):
    model = TrilmDecoderForCausalLM(tiny_decoder_config(tie_word_embeddings=True))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    untied = TrilmDecoderForCausalLM(tiny_decoder_config(tie_word_embeddings=False))
    untied.save_pretrained(tmp_path / "untied")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "untied")
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    assert torch.equal(reloaded.lm_head.weight, untied.lm_head.weight)


def test_bfloat16_load(tmp_path):
    torch.manual_seed(0)
    model = TrilmDecoderForCausalLM(tiny_decoder_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in reloaded.parameters())
    with torch.no_grad():
        logits = reloaded(X).logits
    assert logits.dtype == torch.bfloat16
    assert torch.allclose(logits.float(), model(X).logits, atol=0.05)
    assert reloaded.generate(X, max_new_tokens=4, do_sample=False).shape == (2, 9)


def test_rope_buffers_are_rebuilt_on_load(tmp_path):
    model = TrilmDecoderForCausalLM(tiny_decoder_config(rope_theta=1234.0))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)


REMOTE = {  # family -> (head class, Auto class, tiny config)
    "decoder": ("TrilmDecoderForCausalLM", "AutoModelForCausalLM", tiny_decoder_config),
    "encoder": ("TrilmEncoderForMaskedLM", "AutoModelForMaskedLM", tiny_encoder_config),
    "seq2seq": ("TrilmSeq2SeqForConditionalGeneration", "AutoModelForSeq2SeqLM", tiny_seq2seq_config),
}


@pytest.mark.parametrize("family", REMOTE)
def test_a_checkpoint_loads_with_trust_remote_code_where_trilm_cannot_be_imported(tmp_path, family):
    import trilm.modeling

    head, auto, make_config = REMOTE[family]
    torch.manual_seed(0)
    model = getattr(trilm.modeling, head)(make_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"][auto] == f"modeling_trilm.{head}"
    assert set(saved_files(tmp_path / "ckpt")) >= {"configuration_trilm.py", "modeling_trilm.py"}
    inputs = {"input_ids": X} | ({"decoder_input_ids": X[:, :3]} if family == "seq2seq" else {})
    with torch.no_grad():
        torch.save(model(**inputs).logits, tmp_path / "expected.pt")
    # A fresh interpreter where `import trilm` fails: only the checkpoint's own files can define the classes.
    script = f"""
import os, sys, torch
sys.modules["trilm"] = None
from transformers import AutoConfig, {auto}
folder = {str(tmp_path / "ckpt")!r}
AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = {auto}.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = {{"input_ids": torch.tensor({X.tolist()})}}
if {family == "seq2seq"}:
    inputs["decoder_input_ids"] = inputs["input_ids"][:, :3]
with torch.no_grad():
    assert torch.equal(model(**inputs).logits, torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True))
model.save_pretrained({str(tmp_path / "again")!r})  # re-saved: the same two code files, nothing else
code = {{name for name in os.listdir({str(tmp_path / "again")!r}) if name.endswith(".py")}}
assert code == {{"configuration_trilm.py", "modeling_trilm.py"}}, code
for name in code:
    assert open(os.path.join(folder, name)).read() == open(os.path.join({str(tmp_path / "again")!r}, name)).read(), name
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_classification_head_requires_pad_distinct_from_eos():
    with pytest.raises(ValueError, match="pad_token_id"):
        TrilmDecoderForSequenceClassification(tiny_decoder_config(pad_token_id=2, eos_token_id=2))


def test_classification_head_pools_the_last_non_pad_token_with_left_or_right_padding():
    torch.manual_seed(0)
    model = TrilmDecoderForSequenceClassification(tiny_decoder_config(num_labels=1)).eval()
    text = torch.tensor([[5, 17, 33, 8]])
    right = torch.tensor([[5, 17, 33, 8, 0, 0]])
    left = torch.tensor([[0, 0, 5, 17, 33, 8]])
    with torch.no_grad():
        alone = model(text).logits
        assert torch.allclose(model(right, attention_mask=(right != 0).long()).logits, alone, atol=1e-5)
        assert torch.allclose(model(left, attention_mask=(left != 0).long()).logits, alone, atol=1e-5)


def test_classification_losses_follow_problem_type():
    model = TrilmDecoderForSequenceClassification(tiny_decoder_config(num_labels=3))
    out = model(X, labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert out.logits.shape == (2, 3) and model.score.weight.grad is not None
    regression = TrilmDecoderForSequenceClassification(tiny_decoder_config(num_labels=1))
    assert regression(X, labels=torch.tensor([0.5, -1.0])).loss.item() > 0
