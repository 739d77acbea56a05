"""Tokenizer training and loading: every kind and family, lossless byte-level BPE, chat templates, the
`trilm tokenizer` command, model agreement, and clear errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig
from trilm.recipes.cli import main as trilm
from trilm.tokenization.tokenization_trilm import read_texts
from trilm.tokenization import (
    FAMILIES,
    KINDS,
    TrilmTokenizer,
    byte_level_tokenizer,
    check_tokenizer_matches,
    config_values,
    train_tokenizer,
)

from .conftest import tiny_decoder_config

SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "Sphinx of black quartz, judge my vow — naïve café, 1234 ½ ünïcödé.",
] * 20
PAIR = (["It is a truth universally acknowledged", "Call me Ishmael."], ["that a single man", "Some years ago"])


@pytest.mark.realdata
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_and_family_trains_saves_and_reloads_identically(shared_data, tmp_path, kind, family):
    books = [shared_data / "gutenberg_pg1342_pride_and_prejudice.txt", shared_data / "tinyshakespeare.txt"]
    tokenizer = train_tokenizer(files=books, kind=kind, vocab_size=1500, family=family, max_chars=400_000, num_sentinels=10)
    assert isinstance(tokenizer, TrilmTokenizer) and len(tokenizer) <= 1500
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # transformers' generic fast class: no custom code to run
    assert type(reloaded).__name__ == "TokenizersBackend" and type(TrilmTokenizer.from_pretrained(tmp_path)) is TrilmTokenizer
    assert reloaded.chat_template == tokenizer.chat_template and reloaded.all_special_tokens == tokenizer.all_special_tokens
    texts = (shared_data / "gutenberg_pg84_frankenstein.txt").read_text(encoding="utf-8-sig").splitlines()[2000:2040]
    assert tokenizer(texts)["input_ids"] == reloaded(texts)["input_ids"]

    batch = reloaded(*PAIR, padding=True, truncation=True, max_length=12)
    assert all(len(ids) == len(batch["input_ids"][0]) <= 12 for ids in batch["input_ids"])
    unpadded_lengths = [len(ids) for ids in reloaded(*PAIR)["input_ids"]]
    # The mask covers exactly each row's own tokens; the rest is the pad token (on the tokenizer's padding side).
    batch = reloaded(*PAIR, padding=True)
    for ids, mask, length in zip(batch["input_ids"], batch["attention_mask"], unpadded_lengths):
        assert sum(mask) == length and [t for t, m in zip(ids, mask) if not m] == [reloaded.pad_token_id] * (len(ids) - length)
    assert min(unpadded_lengths) < max(unpadded_lengths)  # one row is padded
    if family == "encoder":
        unpadded = reloaded(*PAIR)
        for ids, types in zip(unpadded["input_ids"], unpadded["token_type_ids"]):
            first_sep = ids.index(reloaded.sep_token_id)
            assert ids[0] == reloaded.cls_token_id and ids[-1] == reloaded.sep_token_id
            assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
        assert reloaded.mask_token == "[MASK]"
    if family == "decoder":
        assert reloaded("a")["input_ids"][0] == reloaded.bos_token_id
        assert reloaded.pad_token_id != reloaded.eos_token_id
    if family == "seq2seq":
        assert reloaded("a")["input_ids"][-1] == reloaded.eos_token_id
        assert reloaded.convert_tokens_to_ids("<extra_id_9>") != reloaded.unk_token_id


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(texts=SMALL_CORPUS, kind="bpe", vocab_size=400, family="decoder", min_frequency=1)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60) | st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
def test_byte_level_bpe_decodes_any_unicode_exactly(bpe, text):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text
    assert all(0 <= i < len(bpe) for i in ids)


@pytest.mark.parametrize(
    "text", ["", "👩‍👩‍👧 family", "e\u0301 combining", "\x00\x07\x1b[0m\r\n\t", "日本語のテキスト", "<s> literal", "  double  spaces  "]
)
def test_byte_level_bpe_round_trips_hard_cases(bpe, text):
    assert bpe.decode(bpe(text, add_special_tokens=False)["input_ids"]) == text


def test_byte_tokenizer_with_no_merges():
    tokenizer = byte_level_tokenizer("decoder")
    assert len(tokenizer) == 256 + 6
    text = "héllo 🎉"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    same = train_tokenizer(texts=SMALL_CORPUS, kind="bpe", vocab_size=256 + 6, family="decoder", min_frequency=1)
    assert len(same) == 256 + 6 and same(text, add_special_tokens=False)["input_ids"] != []


def test_chat_template_marks_exactly_the_assistant_replies(bpe):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello, friend."},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Farewell 🎉"},
    ]
    out = bpe.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert ids[0] == bpe.bos_token_id
    assert bpe.decode(ids).count("<|im_start|>") == 5
    spans, current = [], []
    for token, marked in zip(ids, mask):
        if marked:
            current.append(token)
        elif current:
            spans.append(bpe.decode(current))
            current = []
    if current:
        spans.append(bpe.decode(current))
    # each reply and the end-of-turn token that teaches the model to stop; nothing else
    assert spans == ["Hello, friend.<|im_end|>", "Farewell 🎉<|im_end|>"]
    prompt = bpe.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_files_iterators_and_datasets_give_the_same_texts_and_train(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SMALL_CORPUS) + "\n")
    sources = {
        "file": dict(files=path),
        "files": dict(files=[str(path)]),
        "iterator": dict(texts=iter(SMALL_CORPUS)),
        "dataset": dict(texts=Dataset.from_dict({"body": SMALL_CORPUS})),
    }
    texts = {name: [t.strip() for t in read_texts(**source, text_column="body")] for name, source in sources.items()}
    assert texts["file"] == texts["files"] == texts["iterator"] == texts["dataset"] == SMALL_CORPUS
    sources["iterator"] = dict(texts=iter(SMALL_CORPUS))
    for name, source in sources.items():
        tokenizer = train_tokenizer(**source, kind="wordpiece", vocab_size=150, family="encoder", min_frequency=1, text_column="body")
        assert 100 < len(tokenizer) <= 150, name
        assert tokenizer.unk_token_id not in tokenizer("the quick brown fox")["input_ids"], name
    capped = train_tokenizer(texts=SMALL_CORPUS, kind="wordpiece", vocab_size=1000, family="encoder", max_chars=40)
    assert len(capped) < 100  # only "The quick brown fox jumps over the lazy dog." was read


def test_wordpiece_lowercase_and_accent_stripping():
    tokenizer = train_tokenizer(texts=SMALL_CORPUS, kind="wordpiece", vocab_size=200, family="encoder", lowercase=True, strip_accents=True)
    assert tokenizer.tokenize("NAÏVE Café") == tokenizer.tokenize("naive cafe")


def test_bulk_encoding_matches_the_tokenizer_call(bpe):
    assert bpe.encode_corpus(SMALL_CORPUS[:3]) == bpe(SMALL_CORPUS[:3])["input_ids"]
    assert bpe.encode_corpus(SMALL_CORPUS[:3], add_special_tokens=False) == bpe(SMALL_CORPUS[:3], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(texts=["", "  ", "\n"]), "corpus is empty"),
        (dict(texts=[]), "corpus is empty"),
        (dict(texts=None, files=[]), "corpus is empty"),
        (dict(texts=None), "exactly one source"),
        (dict(files="corpus.txt"), "exactly one source"),
        (dict(texts="word " * 60), "not one string"),
        (dict(kind="sentencepiece"), "kind="),
        (dict(family="vision"), "family="),
        (dict(vocab_size=100), "vocab_size=100 is too small"),
        (dict(kind="wordpiece", vocab_size=12), "vocab_size=12 is too small"),
        (dict(texts=None, files="does/not/exist.txt"), "not found: does/not/exist.txt"),
        (dict(texts=None, files=["book1.txt", "book2.txt"]), "not found: book1.txt, book2.txt"),
        (dict(texts=None, files=[os.devnull + "-missing.txt", __file__]), "not found"),
        (dict(texts=Dataset.from_dict({"body": ["a b"]})), "no column 'text'"),
        (dict(max_chars=0), "max_chars"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    arguments = dict(texts=SMALL_CORPUS, kind="bpe", vocab_size=400, family="decoder") | kwargs
    with pytest.raises(ValueError, match=message):
        train_tokenizer(**arguments)


def test_config_values_and_agreement_checks(bpe):
    values = config_values(bpe, TrilmDecoderConfig)
    assert values == {"vocab_size": len(bpe), "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    config = tiny_decoder_config(**values)
    check_tokenizer_matches(bpe, config)
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer_matches(bpe, tiny_decoder_config(vocab_size=len(bpe) - 10, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    with pytest.raises(ValueError, match="eos_token_id"):
        check_tokenizer_matches(bpe, tiny_decoder_config(**{**values, "eos_token_id": 5}))
    no_pad = train_tokenizer(texts=SMALL_CORPUS, kind="bpe", vocab_size=400, family="decoder")
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no PAD"):
        check_tokenizer_matches(no_pad, config)
    encoder = train_tokenizer(texts=SMALL_CORPUS, kind="wordpiece", vocab_size=150, family="encoder")
    assert config_values(encoder, TrilmEncoderConfig)["mask_token_id"] == 4
    seq2seq = byte_level_tokenizer("seq2seq", num_sentinels=5)
    assert config_values(seq2seq, TrilmSeq2SeqConfig) == {"vocab_size": 264, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def test_cli_trains_from_yaml_and_flags_and_reports(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SMALL_CORPUS * 5) + "\n")
    config = tmp_path / "tok.yaml"
    config.write_text(f"files: [{corpus}]\nkind: unigram\nfamily: seq2seq\nvocab_size: 300\nnum_sentinels: 4\nheldout_fraction: 0.1\n")
    assert trilm(["tokenizer", "--config", str(config), "--output_dir", str(tmp_path / "out"), "--vocab_size", "250"]) == 0
    printed = capsys.readouterr().out
    assert "vocab size" in printed and "tokens per word" in printed and "trained in" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["vocab_size"] <= 250 and report["tokens_per_word"] > 0 and report["heldout_lines"] > 0
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(reloaded) == report["vocab_size"] and "<extra_id_3>" in reloaded.get_vocab()
    assert trilm(["tokenizer", "--config", str(config), "--output_dir", str(tmp_path / "b"), "--benchmark", "true", "--benchmark_rounds", "1"]) == 0
    throughput = json.loads((tmp_path / "b" / "report.json").read_text())["encode_throughput"]
    assert set(throughput) == {"raw backend encode_batch", "stock PreTrainedTokenizerFast", "TrilmTokenizer __call__", "TrilmTokenizer.encode_corpus"}
    assert all(row["chars_per_s"] > 0 for row in throughput.values()) and throughput["raw backend encode_batch"]["vs_raw"] == 1.0
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"body": line}) for line in SMALL_CORPUS) + "\n")
    argv = ["tokenizer", "--dataset_name", str(data), "--text_column", "body", "--kind", "wordpiece", "--family", "encoder"]
    assert trilm([*argv, "--vocab_size", "150", "--output_dir", str(tmp_path / "ds")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: bpe\nvocab: 10\n")
    with pytest.raises(ValueError, match="unknown keys: vocab"):
        trilm(["tokenizer", "--config", str(bad)])
    with pytest.raises(ValueError, match="exactly one source"):
        trilm(["tokenizer", "--output_dir", str(tmp_path / "none")])


def test_a_saved_tokenizer_loads_with_plain_auto_tokenizer_where_trilm_cannot_be_imported(bpe, tmp_path):
    bpe.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert "auto_map" not in config and not (tmp_path / "tok" / "tokenization_trilm.py").exists()
    script = f"""
import sys
sys.modules["trilm"] = None  # import trilm fails from here on
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
assert tok("hello world")["input_ids"] == {bpe("hello world")["input_ids"]}
assert tok.decode(tok("hello world")["input_ids"], skip_special_tokens=True) == "hello world"
assert tok.pad_token == {bpe.pad_token!r} and tok.eos_token == {bpe.eos_token!r} and tok.chat_template == {bpe.chat_template!r}
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_tokenizer_command_with_missing_files_names_them(tmp_path):
    config = tmp_path / "tok.yaml"
    config.write_text("files:\n  - ../nowhere/book1.txt\n  - ../nowhere/book2.txt\nkind: bpe\nvocab_size: 300\n")
    with pytest.raises(ValueError, match="not found: ../nowhere/book1.txt, ../nowhere/book2.txt"):
        trilm(["tokenizer", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
