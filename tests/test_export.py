"""`trilm export`: trilm checkpoints as transformers' own classes (loaded where trilm cannot be imported, and
served by `transformers serve`) and as GGUF files (read back by transformers' GGUF loader)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import trilm.modeling
from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig
from trilm.recipes import export, generate
from trilm.recipes.cli import main as cli
from trilm.recipes.corpus import build_corpus
from trilm.tokenization import config_values, train_tokenizer

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}
BERT_LIKE = dict(norm_type="layernorm", norm_bias=True, norm_position="post", position_embedding_type="learned", mlp_type="plain",
                 hidden_act="gelu", attention_bias=True, mlp_bias=True, embedding_norm=True)
# family, trilm class, transformers class it exports to, tokenizer kind, config
CHECKPOINTS = {
    "decoder": ("TrilmDecoderForCausalLM", "LlamaForCausalLM", "bpe", TrilmDecoderConfig, dict(num_hidden_layers=2, num_key_value_heads=2)),
    "decoder-classifier": ("TrilmDecoderForSequenceClassification", "LlamaForSequenceClassification", "bpe", TrilmDecoderConfig,
                           dict(num_hidden_layers=1, num_labels=2)),
    "encoder": ("TrilmEncoderForMaskedLM", "BertForMaskedLM", "wordpiece", TrilmEncoderConfig,
                dict(num_hidden_layers=1, type_vocab_size=2, **BERT_LIKE)),
    "encoder-classifier": ("TrilmEncoderForSequenceClassification", "BertForSequenceClassification", "wordpiece", TrilmEncoderConfig,
                           dict(num_hidden_layers=1, type_vocab_size=2, num_labels=3, pooler_activation="tanh", **BERT_LIKE)),
    "seq2seq": ("TrilmSeq2SeqForConditionalGeneration", "BartForConditionalGeneration", "bpe", TrilmSeq2SeqConfig,
                dict(encoder_layers=1, decoder_layers=1, position_offset=2, lm_head_bias=True, norm_eps=1e-5, **BERT_LIKE)),
}
TEXT = "Vutam Peltamlo lives in Finsenburg and has 3 owls."


def texts() -> list[str]:
    corpus = build_corpus(0)
    return [row["text"] for row in corpus["text"]["train"][:200]] + [f"{r['question']} {r['answer']}" for r in corpus["qa"]["train"][:200]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny saved trilm checkpoint per case, with a trained tokenizer (the decoder's with its chat template)."""
    root, corpus, folders, tokenizers = tmp_path_factory.mktemp("checkpoints"), texts(), {}, {}
    for name, (head, _, kind, config_class, fields) in CHECKPOINTS.items():
        family = name.split("-")[0]
        if family not in tokenizers:
            sentinels = {"num_sentinels": 8} if family == "seq2seq" else {}
            tokenizers[family] = train_tokenizer(texts=corpus, kind=kind, family=family, vocab_size=400, **sentinels)
        tokenizer = tokenizers[family]
        config = config_class(**config_values(tokenizer, config_class), **SIZES, **fields)
        torch.manual_seed(0)
        model = getattr(trilm.modeling, head)(config)
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def inputs_of(name: str, folder: Path) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer([TEXT, "The owl is brown."], padding=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    if name == "seq2seq":
        batch["decoder_input_ids"] = batch["input_ids"][:, :4]
    return dict(batch)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_exported_checkpoint_gives_the_same_logits_where_trilm_cannot_be_imported(tmp_path, checkpoints, name):
    head, native, _, _, _ = CHECKPOINTS[name]
    assert cli(["export", "--model_name_or_path", str(checkpoints[name]), "--to", "transformers", "--output_dir", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [native] and "auto_map" not in config
    assert "transformers serve" in (tmp_path / "out" / "README.md").read_text()
    model = getattr(trilm.modeling, head).from_pretrained(checkpoints[name]).eval()
    inputs = inputs_of(name, checkpoints[name])
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save({"inputs": inputs, "logits": expected}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.modules["trilm"] = None  # import trilm fails: only transformers' own classes can load the folder
import transformers
folder = {str(tmp_path / "out")!r}
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)  # stdin is closed: a custom-code prompt would fail
model = getattr(transformers, {native!r}).from_pretrained(folder).eval()
auto = transformers.AutoConfig.from_pretrained(folder)
assert type(auto).__module__.startswith("transformers.models."), type(auto)
saved = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
assert tokenizer({TEXT!r})["input_ids"] == saved["inputs"]["input_ids"][0][: len(tokenizer({TEXT!r})["input_ids"])].tolist()
with torch.no_grad():
    diff = (model(**saved["inputs"]).logits - saved["logits"]).abs().max().item()
print(diff)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-4


def read_gguf(folder: Path, name: str):
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_gguf_export_reads_back_with_the_same_logits_tokens_and_chat_template(tmp_path, checkpoints):
    folder = checkpoints["decoder"]
    model = load_decoder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(TEXT)["input_ids"]
    x = torch.tensor([ids])
    chat = [{"role": "user", "content": "Where does Vutam live?"}]
    with torch.no_grad():
        expected = model(x).logits
        greedy = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    differences = {}
    for dtype in ("float32", "q8_0"):
        out = tmp_path / dtype
        assert cli(["export", "--model_name_or_path", str(folder), "--to", "gguf", "--dtype", dtype, "--output_dir", str(out)]) == 0
        gguf_file = f"{folder.name}-{dtype}.gguf"
        assert (out / gguf_file).is_file() and gguf_file in (out / "README.md").read_text()
        loaded, loaded_tokenizer = read_gguf(out, gguf_file)
        assert loaded_tokenizer(TEXT)["input_ids"] == ids
        assert loaded_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            differences[dtype] = (loaded(x).logits - expected).abs().max().item()
            same_greedy = torch.equal(loaded.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id), greedy)
        if dtype == "float32":
            assert same_greedy
            # The file is also a starting point for every recipe: model_name_or_path of a .gguf, back to trilm.
            from trilm.recipes.common.models import ModelArguments, load_model, load_tokenizer

            arguments = ModelArguments(model_name_or_path=str(out / gguf_file))
            back = load_model(arguments, "decoder", load_tokenizer(arguments, "decoder")).eval()
            with torch.no_grad():  # the reader's extra <|endoftext|> has a row of its own: the model's vocabulary compared
                assert type(back) is type(model) and (back(x).logits[..., : expected.shape[-1]] - expected).abs().max() <= 1e-4
    assert differences["float32"] <= 1e-4
    assert 0 < differences["q8_0"] < 0.5  # 8-bit blocks: close, not equal
    assert (tmp_path / "q8_0" / f"{folder.name}-q8_0.gguf").stat().st_size < 0.4 * (tmp_path / "float32" / f"{folder.name}-float32.gguf").stat().st_size


def load_decoder(folder: Path):
    return trilm.modeling.TrilmDecoderForCausalLM.from_pretrained(folder).eval()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_transformers_serve_answers_as_trilm_generate_chat(tmp_path, checkpoints, monkeypatch, capsys):
    folder, out = checkpoints["decoder"], tmp_path / "served"
    assert cli(["export", "--model_name_or_path", str(folder), "--to", "transformers", "--output_dir", str(out)]) == 0
    question = "Where does Vutam Peltamlo live?"
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(question + "\n/exit\n"))
    (args,) = generate.parse_args((generate.GenerateArguments,), ["--model_name_or_path", str(folder), "--chat", "true",
                                                                  "--max_new_tokens", "12"], "trilm generate")
    expected = generate.run(args)[0]["output"]
    port = free_port()
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", str(out),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: the server is up within the deadline, or the test fails
            assert server.poll() is None and time.monotonic() < deadline, "transformers serve did not start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        body = {"model": str(out), "messages": [{"role": "user", "content": question}], "max_tokens": 12}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer["choices"][0]["message"]["content"].strip() == expected


def test_export_refuses_bad_input_before_writing_anything(tmp_path, checkpoints):
    out = tmp_path / "out"
    cases = [
        (["--model_name_or_path", str(checkpoints["encoder"]), "--to", "gguf"], "decoders"),
        (["--model_name_or_path", str(checkpoints["seq2seq"]), "--to", "gguf"], "decoders"),
        (["--model_name_or_path", str(tmp_path / "missing")], "no such folder or file here"),
        (["--model_name_or_path", str(checkpoints["decoder"]), "--to", "onnx"], "to='onnx' is invalid"),
        (["--model_name_or_path", str(checkpoints["decoder"]), "--to", "gguf", "--dtype", "q4_0"], "dtype='q4_0' is invalid"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            cli(["export", *argv, "--output_dir", str(out)])
        assert not out.exists()
    # A modern encoder (pre-norm, RoPE, gated MLP) is no BERT: the field and its value are named.
    modern = tmp_path / "modern"
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["encoder"])
    trilm.modeling.TrilmEncoderForMaskedLM(TrilmEncoderConfig(**config_values(tokenizer, TrilmEncoderConfig), **SIZES,
                                                              num_hidden_layers=1)).save_pretrained(modern)
    tokenizer.save_pretrained(modern)
    with pytest.raises(ValueError, match="BertConfig has no equivalent of norm_bias=False; it needs norm_bias=True"):
        cli(["export", "--model_name_or_path", str(modern), "--output_dir", str(out)])
    assert not out.exists()
    # A decoder with nanoGPT's plain GELU MLP is no Llama: neither export writes it.
    gpt = tmp_path / "gpt"
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["decoder"])
    trilm.modeling.TrilmDecoderForCausalLM(TrilmDecoderConfig(**config_values(tokenizer, TrilmDecoderConfig), **SIZES, num_hidden_layers=1,
                                                              mlp_type="plain", hidden_act="gelu")).save_pretrained(gpt)
    tokenizer.save_pretrained(gpt)
    for target in ("transformers", "gguf"):
        with pytest.raises(ValueError, match="LlamaConfig has no equivalent of mlp_type='plain'"):
            cli(["export", "--model_name_or_path", str(gpt), "--to", target, "--output_dir", str(out)])
        assert not out.exists()
    # A transformers folder is exported already.
    llama = export.to_transformers(load_decoder(checkpoints["decoder"]))
    llama.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="transformers 'llama' model already"):
        cli(["export", "--model_name_or_path", str(tmp_path / "llama"), "--output_dir", str(out)])
    # An output folder that is not empty is kept, unless --overwrite.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "--model_name_or_path", str(checkpoints["decoder"]), "--output_dir", str(out)]
    with pytest.raises(ValueError, match="exists and is not empty"):
        cli(argv)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli([*argv, "--overwrite", "true"]) == 0 and (out / "model.safetensors").is_file()


def test_a_lora_adapter_of_a_language_model_is_merged_into_its_base(tmp_path, checkpoints):
    from peft import LoraConfig, get_peft_model

    base = load_decoder(checkpoints["decoder"])
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")  # its base_model_name_or_path is the decoder folder
    AutoTokenizer.from_pretrained(checkpoints["decoder"]).save_pretrained(tmp_path / "adapter")
    x = torch.tensor([AutoTokenizer.from_pretrained(checkpoints["decoder"])(TEXT)["input_ids"]])
    with torch.no_grad():
        expected = adapted.eval()(x).logits
    assert cli(["export", "--model_name_or_path", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "out")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(exported).__name__ == "LlamaForCausalLM" and not (tmp_path / "out" / "adapter_config.json").exists()
    with torch.no_grad():
        assert (exported(x).logits - expected).abs().max() <= 1e-4
