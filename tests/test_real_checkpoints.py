"""Checkpoints as users start from them: transformers Llama, Qwen2 and Qwen3 folders with a ChatML template that
has no `{% generation %}` markers and pads with EOS, through every recipe; and GGUF files (the shared SmolLM2)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

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


ARCHITECTURES = {  # what each class needs beyond Llama's fields: Qwen2 biases q/k/v, Qwen3 normalizes q and k per head
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": False}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8, "use_sliding_window": False}),
}


def save_chat_checkpoint(folder: Path, architecture: str) -> Path:
    """A tiny random causal LM of `architecture` saved by transformers, its tokenizer padding with EOS (<|im_end|>)."""
    corpus = build_corpus(0)
    texts = [row["text"] for row in corpus["text"]["train"][:300]] + [f"{r['question']} {r['response']}" for r in corpus["qa"]["train"]]
    tokenizer = train_tokenizer(texts=texts, kind="bpe", family="decoder", vocab_size=400)
    tokenizer.chat_template = CHATML
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    config_class, model_class, extra = ARCHITECTURES[architecture]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **extra)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def chat_checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, save_chat_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def test_a_chatml_template_without_markers_gets_a_training_copy_that_renders_the_same(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(save_chat_checkpoint(tmp_path, "llama"))
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


def test_sft_from_a_transformers_folder_keeps_its_template_and_gives_pad_its_own_token(tmp_path, chat_checkpoint, capsys):
    """On an Alpaca-style file (as Code Alpaca), whose replies cannot be checked for answers: the summary says whether
    greedy replies to held-out prompts still end their turn."""
    architecture, folder = chat_checkpoint
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": r["question"], "input": "", "output": r["response"]} for r in build_corpus(0)["qa"]["train"][:40]]))
    config = run_config(tmp_path, "sft", task="sft", model_name_or_path=str(folder), train_file=str(alpaca), validation_split_percentage=10,
                        max_steps=2, max_new_tokens=4)
    assert trilm(["finetune", "--config", str(config)]) == 0
    assert "through a ChatML training copy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    assert 0 <= metrics["eval_replies_ended_before_training"] <= 1 and 0 <= metrics["eval_replies_ended"] <= 1 and "eval_loss" in metrics
    saved = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert saved.chat_template == CHATML and saved.pad_token_id != saved.eos_token_id  # an unused special token became PAD
    assert len(saved) == len(AutoTokenizer.from_pretrained(folder))  # no new token was needed
    assert isinstance(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "sft").get_base_model(), ARCHITECTURES[architecture][1])


def test_reward_dpo_grpo_classification_and_generate_from_a_transformers_folder(tmp_path, chat_checkpoint):
    common = dict(model_name_or_path=str(chat_checkpoint[1]), max_steps=2, max_eval_samples=8, max_new_tokens=4)
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
    from peft import AutoPeftModelForSequenceClassification

    classifier = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "classify", num_labels=2).eval()
    assert isinstance(classifier.get_base_model(), AutoModelForSequenceClassification._model_mapping[type(classifier.config)])
    rows = trilm(["generate", "--model_name_or_path", str(tmp_path / "dpo"), "--prompt", "Hi", "--use_chat_template", "true", "--max_new_tokens", "4"])
    assert rows == 0
    for folder in ("dpo", "grpo"):
        assert AutoTokenizer.from_pretrained(tmp_path / folder).chat_template == CHATML
        base = AutoPeftModelForCausalLM.from_pretrained(tmp_path / folder).get_base_model()
        assert isinstance(base, ARCHITECTURES[chat_checkpoint[0]][1])


def test_a_reply_has_ended_where_it_holds_the_end_of_turn_within_max_new_tokens(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(save_chat_checkpoint(tmp_path, "llama"))
    end, word = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("a")

    class Scripted(torch.nn.Module):  # replies as given: the first ends its turn, the second runs out of tokens
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            replies = torch.tensor([[word, end, tokenizer.pad_token_id], [word, word, word]])
            return torch.cat([input_ids, replies], 1)

    replies = chat.generate_replies(Scripted(), tokenizer, ["Hi", [{"role": "user", "content": "Hello"}]], max_new_tokens=3)
    assert [reply.ended for reply in replies] == [True, False] and replies[0].text == "a"
    assert replies[0].ids == [word, end] and replies[1].ids == [word, word, word]  # up to and including the stop


def AutoPeftModelForSequenceClassification_from(folder: Path):
    from peft import AutoPeftModelForSequenceClassification

    return AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()


def test_a_gguf_file_needs_the_gguf_package_named_in_the_error(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ValueError, match=r"gguf package: pip install 'trilm\[gguf\]'"):
        models.checkpoint_family(str(tmp_path / "model.gguf"))


def test_a_gguf_file_of_an_architecture_interop_does_not_convert_is_refused_naming_it(tmp_path):
    """A GPT-2 GGUF file (which transformers reads) is refused before any work, naming its architecture and the
    ones trilm converts."""
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 16), (writer.add_block_count, 1),
                       (writer.add_head_count, 2), (writer.add_feed_forward_length, 32), (writer.add_layer_norm_eps, 1e-5)):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    writer.add_token_types([1, 1, 1])
    writer.add_token_merges([])
    writer.add_tensor("token_embd.weight", np.zeros((3, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"gpt2.gguf holds a 'gpt2' model: trilm continues from trilm checkpoints or converts llama, qwen2, qwen3"):
        trilm(["reward", "--model_name_or_path", str(tmp_path / "gpt2.gguf"), "--output_dir", str(tmp_path / "reward")])
    assert not (tmp_path / "reward").exists()


def test_a_folder_of_an_architecture_interop_does_not_convert_is_refused_naming_the_ones_it_does(tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"holds a 'gpt2' model: trilm continues from trilm checkpoints or converts llama, qwen2, qwen3, bert, bart"):
        trilm(["finetune", "--task", "sft", "--model_name_or_path", str(tmp_path / "gpt2"), "--output_dir", str(tmp_path / "sft")])
    assert not (tmp_path / "sft").exists()


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
