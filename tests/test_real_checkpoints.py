"""Checkpoints as users start from them: a transformers Llama folder with a ChatML template that has no
`{% generation %}` markers and pads with EOS, through every recipe; and a GGUF file (the shared SmolLM2)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from trilm.modeling.interop import from_transformers
from trilm.recipes.cli import main as trilm
from trilm.recipes.common import chat, models
from trilm.recipes.corpus import build_corpus
from trilm.tokenization import train_tokenizer

from .test_alignment import run_config

# SmolLM2's template, as most small ChatML checkpoints ship it: a default system turn, no generation markers.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_chat(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM saved by transformers, its tokenizer padding with EOS (<|im_end|>)."""
    folder = tmp_path_factory.mktemp("llama-chat")
    corpus = build_corpus(0)
    texts = [row["text"] for row in corpus["text"]["train"][:300]] + [f"{r['question']} {r['response']}" for r in corpus["qa"]["train"]]
    tokenizer = train_tokenizer(texts=texts, kind="bpe", family="decoder", vocab_size=400)
    tokenizer.chat_template = CHATML
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_chatml_template_without_markers_gets_a_training_copy_that_renders_the_same(llama_chat):
    tokenizer = AutoTokenizer.from_pretrained(llama_chat)
    template, how = chat.training_chat_template(tokenizer)
    assert how == "a ChatML training copy" and "{% generation %}" in template and chat.renders_as(tokenizer, template)
    rendered = tokenizer.apply_chat_template(chat.PROBES[1], chat_template=template, return_dict=True, return_assistant_tokens_mask=True)
    masked = tokenizer.decode([t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m])
    assert masked == "Hello! How can I help?<|im_end|>"  # the reply and its end of turn, nothing else
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    assert chat.training_chat_template(tokenizer) == (None, "prompt/completion masking")  # not ChatML: the last reply is masked in
    tokenizer.chat_template = "{% if add_generation_prompt %}A:{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="cannot be masked either: pass a template with"):
        chat.training_chat_template(tokenizer)


def test_sft_from_a_llama_folder_keeps_its_template_and_gives_pad_its_own_token(tmp_path, llama_chat, capsys):
    config = run_config(tmp_path, "sft", task="sft", model_name_or_path=str(llama_chat), max_eval_samples=4, max_new_tokens=4)
    assert trilm(["finetune", "--config", str(config)]) == 0
    assert "through a ChatML training copy" in capsys.readouterr().out
    saved = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert saved.chat_template == CHATML and saved.pad_token_id != saved.eos_token_id  # an unused special token became PAD
    assert len(saved) == len(AutoTokenizer.from_pretrained(llama_chat))  # no new token was needed
    assert isinstance(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "sft").get_base_model(), LlamaForCausalLM)


def test_reward_dpo_grpo_classification_and_generate_from_a_llama_folder(tmp_path, llama_chat):
    common = dict(model_name_or_path=str(llama_chat), max_steps=2, max_eval_samples=8, max_new_tokens=4)
    assert trilm(["reward", "--config", str(run_config(tmp_path, "reward", **common))]) == 0
    reward_model = AutoPeftModelForSequenceClassification_from(tmp_path / "reward")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "reward")
    pair = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}] for reply in ("Hello!", "Go away.")]
    from trilm.recipes.common.rewards import score_conversations

    scores = score_conversations(reward_model, tokenizer, pair)
    assert scores.shape == (2,) and torch.isfinite(scores).all() and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert trilm(["dpo", "--config", str(run_config(tmp_path, "dpo", **common))]) == 0
    assert trilm(["rlhf", "--config", str(run_config(tmp_path, "grpo", **common, num_generations=4, max_completion_length=6))]) == 0
    classify = run_config(tmp_path, "classify", task="sequence-classification", **{k: v for k, v in common.items() if k != "max_new_tokens"})
    assert trilm(["finetune", "--config", str(classify)]) == 0
    rows = trilm(["generate", "--model_name_or_path", str(tmp_path / "dpo"), "--prompt", "Hi", "--use_chat_template", "true", "--max_new_tokens", "4"])
    assert rows == 0
    for folder in ("dpo", "grpo"):
        assert AutoTokenizer.from_pretrained(tmp_path / folder).chat_template == CHATML


def AutoPeftModelForSequenceClassification_from(folder: Path):
    from peft import AutoPeftModelForSequenceClassification

    return AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()


def test_a_gguf_file_needs_the_gguf_package_named_in_the_error(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ValueError, match=r"gguf package: pip install 'trilm\[gguf\]'"):
        models.checkpoint_family(str(tmp_path / "model.gguf"))


@pytest.mark.realmodel
def test_the_smollm2_gguf_file_becomes_a_trilm_model_with_the_same_logits():
    """Loaded once (dequantizing 135M parameters is most of the time); the recipes' own GGUF path is tested on a
    tiny exported file in test_export.py."""
    arguments = models.ModelArguments(model_name_or_path=str(SMOLLM2))
    assert models.resolve_family(arguments) == "decoder"
    tokenizer = models.load_tokenizer(arguments, "decoder")
    theirs = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()
    ours = from_transformers(theirs).eval()
    batch = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert (ours(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-4
        greedy = [model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=2) for model in (ours, theirs)]
    assert torch.equal(*greedy) and type(ours).__name__ == "TrilmDecoderForCausalLM"
    assert models.distinct_pad(tokenizer) is False and tokenizer.pad_token_id != tokenizer.eos_token_id  # an unused special token
