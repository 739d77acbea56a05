"""`trilm pretrain` end to end for each family, resuming, many processes, the objectives' collators, the
built-in corpus, and clear errors before any training starts."""

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer, Trainer

from trilm.configuration import TrilmEncoderConfig
from trilm.modeling import TrilmDecoderForCausalLM, TrilmEncoderForMaskedLM
from trilm.recipes import pretrain
from trilm.recipes.cli import main as trilm
from trilm.recipes.common.collators import CausalLMCollator, SpanCorruptionCollator, span_corruption_lengths
from trilm.recipes.corpus import KINDS, build_corpus, check_answer, load_builtin, write_corpus
from trilm.tokenization import config_values

from .conftest import tiny_decoder_config

HEADS = {"encoder": AutoModelForMaskedLM, "decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}
LAYERS = {"encoder": {"num_hidden_layers": 1}, "decoder": {"num_hidden_layers": 1}, "seq2seq": {"encoder_layers": 1, "decoder_layers": 1}}


def tiny_config(tmp_path: Path, family: str, **overrides) -> Path:
    """A YAML preset of a tiny run: a byte-level tokenizer (nothing to train), a few steps, no checkpoints."""
    values = {
        "family": family,
        "model": {**SIZES, **LAYERS[family]},
        "tokenizer": {"kind": "byte"},
        "block_size": 32,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_train_samples": 200,
        "max_eval_samples": 20,
        "learning_rate": 0.003,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "output_dir": str(tmp_path / f"run-{family}"),
        "seed": 0,
        **overrides,
    }
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("family", ["encoder", "decoder", "seq2seq"])
def test_each_family_pretrains_on_the_builtin_corpus_and_reloads(tmp_path, family):
    config = tiny_config(tmp_path, family)
    assert trilm(["pretrain", "--config", str(config)]) == 0
    folder = tmp_path / f"run-{family}"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "trilm_args.yaml", "metrics.json", "loss.png", "README.md"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_perplexity", "train_tokens_per_second", "train_runtime", "wall_time"):
        assert key in metrics and metrics[key] > 0, key
    # The folder says in which precision the run ran, why, and on how many threads.
    arguments = yaml.safe_load((folder / "trilm_args.yaml").read_text())
    assert metrics["precision"] == ("bf16" if arguments["bf16"] else "float32")
    assert metrics["precision_reason"].startswith("auto: ") and metrics["cpu_capability"] in metrics["precision_reason"]
    assert metrics["num_threads"] == torch.get_num_threads()
    assert f"# precision: {metrics['precision']}\n" in (folder / "trilm_args.yaml").read_text()
    model = HEADS[family].from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == f"trilm_{family}" and len(tokenizer) <= model.config.vocab_size
    batch = tokenizer(["Kalo lives in Dunton."], return_tensors="pt")
    with torch.no_grad():
        output = model(**batch, labels=batch["input_ids"]) if family != "encoder" else model(**batch)
    assert torch.isfinite(output.logits).all()
    # The resolved arguments run the same job again.
    again = tmp_path / "again"
    assert trilm(["pretrain", "--config", str(folder / "trilm_args.yaml"), "--output_dir", str(again), "--max_steps", "1"]) == 0
    assert (again / "model.safetensors").is_file()


def test_decoder_pretrains_on_local_files_with_a_trained_tokenizer(tmp_path):
    documents = [row["text"] for row in build_corpus(0)["text"]["train"][:300]]
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": text, "id": i}) + "\n" for i, text in enumerate(documents))
    config = tiny_config(tmp_path, "decoder", tokenizer={"kind": "bpe", "vocab_size": 300})
    argv = ["pretrain", "--config", str(config), "--train_file", str(train), "--text_column_name", "body"]
    assert trilm(argv) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run-decoder")
    assert len(tokenizer) == 300 and len(tokenizer.tokenize(" lives in")) <= 3  # merges learned from the file
    text = tmp_path / "book.txt"
    text.write_text("\n".join(documents[:100]))
    assert trilm(["pretrain", "--config", str(config), "--train_file", str(text), "--output_dir", str(tmp_path / "txt")]) == 0


# ---------------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("family", ["encoder", "decoder", "seq2seq"])
def test_a_run_stopped_part_way_resumes_to_the_same_weights(tmp_path, family, monkeypatch):
    common = dict(max_steps=8, save_strategy="steps", save_steps=3)
    whole = tiny_config(tmp_path, family, output_dir=str(tmp_path / "whole"), **common)
    assert trilm(["pretrain", "--config", str(whole)]) == 0

    parted = tiny_config(tmp_path, family, output_dir=str(tmp_path / "parted"), **common)
    step = Trainer.training_step
    calls = {"n": 0}

    def stop_after_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt("stopped part-way")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", stop_after_seven)
    with pytest.raises(KeyboardInterrupt):
        trilm(["pretrain", "--config", str(parted)])
    monkeypatch.setattr(Trainer, "training_step", step)
    checkpoints = sorted(p.name for p in (tmp_path / "parted").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]  # nothing before the last checkpoint is lost
    assert trilm(["pretrain", "--config", str(parted), "--resume_from_checkpoint", str(tmp_path / "parted" / "checkpoint-6")]) == 0
    expected, actual = weights(tmp_path / "whole"), weights(tmp_path / "parted")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


# ----------------------------------------------------------------------------- many processes
@pytest.mark.parametrize("family, tokenizer", [("decoder", {"kind": "byte"}), ("encoder", {"kind": "wordpiece", "vocab_size": 300})])
def test_two_processes_train_together_and_save_once(tmp_path, family, tokenizer):
    # A trained WordPiece vocabulary differs from process to process: the main process trains it for all.
    config = tiny_config(tmp_path, family, max_steps=3, tokenizer=tokenizer)
    script = Path(__file__).parent / "ddp_pretrain.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(config), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # two CPU processes over gloo, also on a GPU machine
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1) if (tmp_path / f"rank{rank}.json").exists()]
    assert len(reports) == 2, result.stderr[-3000:]
    assert all(r["world_size"] == 2 for r in reports)
    assert reports[0]["checksum"] == reports[1]["checksum"]
    assert reports[0]["tokenizer"] == reports[1]["tokenizer"]
    assert [r["wrote_output"] for r in reports] == [True, False]
    saved = hashlib.sha256(b"".join(t.numpy().tobytes() for _, t in sorted(weights(tmp_path / f"run-{family}").items()))).hexdigest()
    assert saved == reports[0]["checksum"]
    # torch 2.13's gloo sometimes aborts at exit after a correct run; anything else is a failure.
    assert result.returncode == 0 or "gloo" in result.stderr.lower(), result.stderr[-3000:]


# ------------------------------------------------------------------------------ the objectives
def test_span_corruption_masks_the_density_in_ordered_sentinels_and_keeps_every_token():
    torch.manual_seed(0)
    inputs_length, noise_density = 64, 0.15
    read, target_length = span_corruption_lengths(inputs_length, noise_density, 3.0)
    sentinels = list(range(1000, 1100))
    collator = SpanCorruptionCollator(sentinels, eos_token_id=2, noise_density=noise_density, mean_noise_span_length=3.0)
    tokens = [list(range(10 + 100 * i, 10 + 100 * i + read)) for i in range(8)]  # below the sentinel ids
    batch = collator([{"input_ids": row} for row in tokens])
    assert batch["input_ids"].shape == (8, inputs_length) and batch["labels"].shape == (8, target_length)
    for row, inputs, targets in zip(tokens, batch["input_ids"].tolist(), batch["labels"].tolist()):
        assert inputs[-1] == 2 and targets[-1] == 2
        used_in = [t for t in inputs[:-1] if t in sentinels]
        used_out = [t for t in targets[:-1] if t in sentinels]
        assert used_in == used_out == sentinels[: len(used_in)]  # in order, from <extra_id_0>
        kept = [t for t in inputs[:-1] if t not in sentinels]
        masked = [t for t in targets[:-1] if t not in sentinels]
        assert sorted(kept + masked) == row  # every token exactly once, in the input or the target
        assert abs(len(masked) / len(row) - noise_density) < 0.02
        # Each sentinel stands where its span was: the input read with spans restored is the original.
        restored, spans, current = [], {}, None
        for t in targets[:-1]:
            if t in sentinels:
                current = t
                spans[t] = []
            else:
                spans[current].append(t)
        for t in inputs[:-1]:
            restored += spans[t] if t in sentinels else [t]
        assert restored == row


def test_packed_documents_with_restarting_positions_do_not_attend_to_each_other():
    torch.manual_seed(0)
    model = TrilmDecoderForCausalLM(tiny_decoder_config()).eval()
    eos = model.config.eos_token_id
    documents = [[5, 6, 7, 8, eos], [9, 10, 11, eos], [12, 13, 14, 15, 16, eos]]
    collator = CausalLMCollator(eos, reset_position_ids=True)
    batch = collator([{"input_ids": sum(documents, [])}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"][0].tolist()[5] == -100 and batch["labels"][0].tolist()[9] == -100
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([doc])).logits[0] for doc in documents])
    assert torch.allclose(packed, alone, atol=1e-5)
    plain = CausalLMCollator(eos)([{"input_ids": sum(documents, [])}])
    assert "position_ids" not in plain and torch.equal(plain["labels"], plain["input_ids"])


# ---------------------------------------------------------------------------- the built-in corpus
def test_builtin_corpus_is_deterministic_and_carries_every_kind(tmp_path):
    first, again, other = build_corpus(0), build_corpus.__wrapped__(0), build_corpus(1)
    assert first == again
    assert first["text"]["train"][:50] != other["text"]["train"][:50]
    assert set(first) == set(KINDS)
    for kind in KINDS:
        assert len(load_builtin(kind)["train"]) > 1000 or kind in ("qa", "prompts", "preferences"), kind
    qa = first["qa"]
    trained = {row["question"] for split in ("train", "validation") for row in qa[split]}
    assert qa["test"] and not trained & {row["question"] for row in qa["test"]}
    # Demonstrations (qa), comparisons (prompts, preferences) and the test ask about disjoint people and pairs.
    def asked_about(rows):  # the person's name, or the operand pair
        return {m[1] or (m[2], m[3]) for row in rows if (m := re.search(r"([A-Z]\w+ [A-Z]\w+)|(\d+) (?:plus|minus) (\d+)", row["question"]))}
    demonstrated = asked_about(qa["train"] + qa["validation"])
    compared = asked_about(first["prompts"]["train"] + first["prompts"]["validation"])
    tested = asked_about(qa["test"])
    assert demonstrated and compared and not demonstrated & compared and not (demonstrated | compared) & tested
    assert first["prompts"]["test"] == qa["test"]
    assert [p["prompt"] for p in first["preferences"]["train"]] == [r["question"] for r in first["prompts"]["train"]]
    # A response states the answer as the pretraining text does, and the checker takes either.
    text = "\n".join(row["text"] for row in first["text"]["train"])
    for row in qa["test"][:50]:
        assert row["answer"] in row["response"] and check_answer(row["response"], row["answer"], row["response"])
        assert not check_answer(f"{row['response']} {row['answer']}", row["answer"], row["response"])
    assert sum(row["response"] in text for row in qa["test"]) > len(qa["test"]) / 2  # held-out facts are read, never asked
    for row in first["extractive_qa"]["train"][:200]:
        start, text = row["answers"]["answer_start"][0], row["answers"]["text"][0]
        assert row["context"][start : start + len(text)] == text
    for row in first["tagging"]["train"][:200]:
        assert len(row["tokens"]) == len(row["tags"])
    pair = first["preferences"]["train"][0]
    assert check_answer(pair["chosen"] + ".\nmore", pair["chosen"]) and not check_answer(pair["rejected"], pair["chosen"])
    assert trilm(["corpus", "--output_dir", str(tmp_path / "corpus")]) == 0
    lines = (tmp_path / "corpus" / "qa_test.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == qa["test"]
    assert sum(p.stat().st_size for p in (tmp_path / "corpus").iterdir()) < 20e6


# ------------------------------------------------------------------- bad input, before training
@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: every error below must come before it."""
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started"))


def test_bad_input_is_a_value_error_before_training(tmp_path, no_training):
    config = tiny_config(tmp_path, "decoder")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"content": "a b c", "source": "x"}\n' * 50)
    cases = [
        (["--train_file", str(tmp_path / "missing.txt")], "missing.txt not found"),
        (["--train_file", str(empty)], "empty"),
        (["--train_file", str(rows)], "no column 'text'; its columns are 'content', 'source'"),
        (["--family", "vision"], "family='vision' does not exist"),
        (["--model", "{hidden_size: 32, num_layers: 3}"], "unknown config fields num_layers"),
        (["--tokenizer", "{kind: sentencepiece}"], "kind='sentencepiece' does not exist"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            trilm(["pretrain", "--config", str(config), *extra])
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text(config.read_text() + "learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown keys: learning_rat"):
        trilm(["pretrain", "--config", str(unknown_key)])
    assert not (tmp_path / "run-decoder").exists()


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path, no_training):
    config = tiny_config(tmp_path, "decoder", output_dir=str(tmp_path / "small"), max_steps=1)
    from trilm.tokenization import byte_level_tokenizer, train_tokenizer

    byte_level_tokenizer("decoder").save_pretrained(tmp_path / "bytes")
    # A checkpoint built for the 262-token byte tokenizer, then a 400-token tokenizer given with it.
    TrilmDecoderForCausalLM(
        tiny_decoder_config(vocab_size=262, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    ).save_pretrained(tmp_path / "checkpoint")
    texts = [row["text"] for row in build_corpus(0)["text"]["train"][:200]]
    train_tokenizer(texts=texts, kind="bpe", vocab_size=400, family="decoder").save_pretrained(tmp_path / "bigger")
    argv = ["pretrain", "--config", str(config), "--family", "decoder", "--model_name_or_path", str(tmp_path / "checkpoint")]
    with pytest.raises(ValueError, match="model: sets the config of a new model"):
        trilm([*argv, "--tokenizer_name_or_path", str(tmp_path / "bigger")])
    plain = tiny_config(tmp_path, "decoder", model=None, tokenizer=None, output_dir=str(tmp_path / "small"))
    argv = ["pretrain", "--config", str(plain), "--model_name_or_path", str(tmp_path / "checkpoint")]
    with pytest.raises(ValueError, match="The tokenizer has 400 tokens"):
        trilm([*argv, "--tokenizer_name_or_path", str(tmp_path / "bigger")])
    # Another model's tokenizer, smaller and with no clashing ids, is refused too, naming both: an encoder's
    # tokenizer (no EOS) for continued pretraining of the decoder; the byte tokenizer (no MASK) for an encoder.
    encoder_tokenizer = train_tokenizer(texts=texts, kind="wordpiece", vocab_size=262, family="encoder")
    encoder_tokenizer.save_pretrained(tmp_path / "encoder-tokenizer")
    with pytest.raises(ValueError, match=r"The tokenizer \(.*encoder-tokenizer\) does not fit the model \(.*checkpoint\).*no (BOS|EOS) token"):
        trilm([*argv, "--tokenizer_name_or_path", str(tmp_path / "encoder-tokenizer")])
    TrilmEncoderForMaskedLM(TrilmEncoderConfig(**config_values(encoder_tokenizer, TrilmEncoderConfig), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4)).save_pretrained(tmp_path / "encoder")
    encoder = tiny_config(tmp_path, "encoder", model=None, tokenizer=None, output_dir=str(tmp_path / "small"))
    with pytest.raises(ValueError, match="no MASK token"):
        trilm(["pretrain", "--config", str(encoder), "--model_name_or_path", str(tmp_path / "encoder"), "--tokenizer_name_or_path", str(tmp_path / "bytes")])
    seq2seq = tiny_config(tmp_path, "seq2seq", tokenizer=None)
    with pytest.raises(ValueError, match="sentinel tokens"):
        trilm(["pretrain", "--config", str(seq2seq), "--tokenizer_name_or_path", str(tmp_path / "bytes")])


def test_every_preset_parses(tmp_path):
    presets = sorted((Path(pretrain.__file__).parent / "configs").glob("pretrain-*.yaml"))
    assert len(presets) >= 3
    for preset in presets:
        parsed = pretrain.parse_args(pretrain.ARGUMENT_TYPES, ["--config", str(preset)], "trilm pretrain", pretrain.launch_defaults())
        assert parsed[0].family in ("encoder", "decoder", "seq2seq"), preset.name


def test_a_presets_warmup_stable_decay_is_fitted_to_fewer_steps_and_a_given_one_that_does_not_fit_is_refused(caplog):
    def parse(*argv):
        return pretrain.parse(["--config", "pretrain-decoder-tiny.yaml", *argv])[-1]

    preset = parse()
    assert preset.lr_scheduler_type == "warmup_stable_decay" and preset.lr_scheduler_kwargs["num_decay_steps"] + preset.warmup_steps <= preset.max_steps
    with caplog.at_level("WARNING"):
        fitted = parse("--max_steps", "60")
    assert (fitted.warmup_steps, fitted.lr_scheduler_kwargs["num_decay_steps"]) == (6, 24) and "fitted to warmup_steps 6" in caplog.text
    # The fitted schedule warms up to the learning rate, holds it, then decays to 0 at the last step.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=fitted.learning_rate)
    from transformers import get_scheduler

    schedule = get_scheduler(fitted.lr_scheduler_type, optimizer, fitted.warmup_steps, 60, scheduler_specific_kwargs=fitted.lr_scheduler_kwargs)
    factors = [schedule.lr_lambdas[0](step) for step in range(61)]
    assert factors[6:36] == [1.0] * 30 and factors[:6] == sorted(factors[:6]) and factors[36:] == sorted(factors[36:], reverse=True)
    assert factors[60] == 0.0
    for given, message in ((["--warmup_steps", "40"], r"warmup_steps \(40\) \+ num_decay_steps \(90\) exceed max_steps \(60\)"),
                           (["--lr_scheduler_kwargs", '{"num_decay_steps": 50}'], r"\(30\) \+ num_decay_steps \(50\)"),
                           (["--lr_scheduler_kwargs", "{}"], "needs its decay length"),
                           (["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_decay_steps": 5}'], "cosine does not take it")):
        with pytest.raises(ValueError, match=message):
            parse("--max_steps", "60", *given)
    # Another schedule on the command line replaces the preset's, its decay length with it.
    assert parse("--lr_scheduler_type", "cosine").lr_scheduler_kwargs == {}


def test_the_evaluation_at_the_last_step_is_the_final_one_not_run_again(tmp_path, monkeypatch):
    calls = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: calls.append(self.state.global_step) or evaluate(self, *a, **k))
    config = tiny_config(tmp_path, "decoder", eval_strategy="steps", eval_steps=2, eval_on_start=True)
    trainer, metrics = pretrain.run(*pretrain.parse(["--config", str(config)]))
    assert calls == [0, 2, 4]  # during training only
    last = [row for row in trainer.state.log_history if "eval_loss" in row][-1]
    assert last["step"] == 4 and metrics["eval_loss"] == last["eval_loss"]
    calls.clear()
    trainer, metrics = pretrain.run(*pretrain.parse(["--config", str(config), "--eval_steps", "3", "--output_dir", str(tmp_path / "b")]))
    assert calls == [0, 3, 4]  # the last step was not evaluated in training: once more at the end
    assert metrics["eval_loss"] == [row for row in trainer.state.log_history if "eval_loss" in row][-1]["eval_loss"]


def test_a_second_run_reads_its_packed_blocks_from_the_datasets_cache(tmp_path):
    from trilm.recipes.common.data import DataArguments, load_raw_datasets, pack_texts
    from trilm.tokenization import byte_level_tokenizer

    text = tmp_path / "book.txt"
    text.write_text("\n".join(row["text"] for row in build_corpus(0)["text"]["train"][:300]))
    cache_files = []
    for _ in range(2):
        raw = load_raw_datasets(DataArguments(train_file=str(text)))
        tokenizer = byte_level_tokenizer("decoder")  # a new object each run, as in a new process
        packed = pack_texts(raw["train"], tokenizer, "text", 64, tokenizer.eos_token_id)
        cache_files.append([f["filename"] for f in packed.cache_files])
    assert cache_files[0] and cache_files[0] == cache_files[1]


def words_partly_masked(offset_rows: list, label_rows: list) -> tuple[int, int]:
    """(words with some but not all tokens chosen for the loss, words of several tokens fully chosen) over the
    rows of a masked-LM batch; a word is a run of tokens whose offsets touch (DataCollatorForLanguageModeling's own
    definition), special tokens (offsets (0, 0)) belong to none."""
    partly = whole = 0
    for offsets, labels in zip(offset_rows, label_rows):
        words, current = [], []
        for i, (start, end) in enumerate(offsets):
            if (start, end) == (0, 0) or (current and start != offsets[current[-1]][1]):
                words.append(current)
                current = []
            if (start, end) != (0, 0):
                current.append(i)
        words.append(current)
        for word in (w for w in words if len(w) > 1):
            chosen = sum(labels[i] != -100 for i in word)
            partly += 0 < chosen < len(word)
            whole += chosen == len(word)
    return partly, whole


def test_whole_word_masking_chooses_every_token_of_a_word_or_none(tmp_path):
    from trilm.recipes.common.data import pack_texts
    from trilm.tokenization import train_tokenizer

    raw = load_builtin("text")["train"].select(range(300))
    tokenizer = train_tokenizer(texts=raw["text"], kind="wordpiece", family="encoder", vocab_size=200)  # small: words split
    blocks = pack_texts(raw, tokenizer, "text", 64, tokenizer.sep_token_id, with_offsets=True).select(range(32))
    counts = {}
    for whole_word_mask in (True, False):
        arguments = pretrain.PretrainArguments(whole_word_mask=whole_word_mask, mlm_probability=0.3)
        collator, _, _ = pretrain.objective("encoder", tokenizer, arguments, 64, seed=0)
        batch = collator([dict(row) for row in blocks])  # the collator reads and drops offset_mapping
        counts[whole_word_mask] = words_partly_masked(blocks["offset_mapping"], batch["labels"].tolist())
    assert counts[True][0] == 0 and counts[True][1] > 20  # whole words, and many of them
    assert counts[False][0] > 20  # token masking splits words: the check above can fail


def test_streaming_reads_the_same_rows_and_blocks_as_loading(tmp_path):
    from trilm.recipes.common.data import DataArguments, load_raw_datasets, pack_texts
    from trilm.tokenization import byte_level_tokenizer

    text = tmp_path / "book.jsonl"
    text.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in build_corpus(0)["text"]["train"][:300]))
    tokenizer = byte_level_tokenizer("decoder")
    rows, blocks = {}, {}
    for streaming in (True, False):
        raw = load_raw_datasets(DataArguments(train_file=str(text), streaming=streaming, validation_split_percentage=0, max_train_samples=100))
        rows[streaming] = [row["text"] for row in raw["train"]]
        blocks[streaming] = [row["input_ids"] for row in pack_texts(raw["train"], tokenizer, "text", 64, tokenizer.eos_token_id)]
    assert len(rows[True]) == 100 and rows[True] == rows[False]
    assert len(blocks[True]) > 50 and blocks[True] == blocks[False]


def test_whole_word_masking_and_streaming_runs_and_a_saved_dataset_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"text": row["text"]} for row in build_corpus(0)["text"]["train"][:200]]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(tmp_path / "dataset")
    encoder = tiny_config(tmp_path, "encoder", whole_word_mask=True, output_dir=str(tmp_path / "wwm"))
    assert trilm(["pretrain", "--config", str(encoder), "--dataset_name", str(tmp_path / "dataset")]) == 0
    assert yaml.safe_load((tmp_path / "wwm" / "trilm_args.yaml").read_text())["whole_word_mask"] is True
    assert json.loads((tmp_path / "wwm" / "metrics.json").read_text())["eval_loss"] > 0
    decoder = tiny_config(tmp_path, "decoder", streaming=True, output_dir=str(tmp_path / "stream"))
    assert trilm(["pretrain", "--config", str(decoder)]) == 0
    assert json.loads((tmp_path / "stream" / "metrics.json").read_text())["train_loss"] > 0


def test_pretraining_continues_from_a_trilm_checkpoint_and_from_a_llama_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trilm.tokenization import byte_level_tokenizer

    first = tiny_config(tmp_path, "decoder", output_dir=str(tmp_path / "first"))
    assert trilm(["pretrain", "--config", str(first)]) == 0
    more = tiny_config(tmp_path, "decoder", model=None, tokenizer=None, output_dir=str(tmp_path / "more"))
    more.write_text(more.read_text().replace("family: decoder\n", ""))  # the family comes from the checkpoint
    assert trilm(["pretrain", "--config", str(more), "--model_name_or_path", str(tmp_path / "first")]) == 0
    assert not torch.equal(weights(tmp_path / "first")["model.embed_tokens.weight"], weights(tmp_path / "more")["model.embed_tokens.weight"])

    tokenizer = byte_level_tokenizer("decoder")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    converted = tiny_config(tmp_path, "decoder", model=None, tokenizer=None, output_dir=str(tmp_path / "from-llama"))
    assert trilm(["pretrain", "--config", str(converted), "--model_name_or_path", str(tmp_path / "llama")]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "from-llama").config.model_type == "trilm_decoder"


def test_quickstart_full_pretrains_its_base_with_the_recipe_its_stages_were_measured_from(tmp_path, monkeypatch):
    from trilm.recipes import quickstart

    class Stop(Exception):
        pass

    seen = []

    def run(*arguments):  # records the training arguments instead of training
        seen.append(arguments[-1])
        raise Stop

    monkeypatch.setattr(pretrain, "run", run)
    for argv, expected in ((["--full"], ("cosine", 0.003, 1500, {})), ([], ("warmup_stable_decay", 0.007, 220, {"num_decay_steps": 90}))):
        args = quickstart.parse_args((quickstart.QuickstartArguments,), ["--families", "decoder", "--output_dir", str(tmp_path), *argv], "q")[0]
        with pytest.raises(Stop):
            quickstart.pretrain_family("decoder", args)
        trained = seen.pop()
        assert (trained.lr_scheduler_type, trained.learning_rate, trained.max_steps, trained.lr_scheduler_kwargs) == expected


def test_quickstart_trains_saves_reloads_and_samples_every_family(tmp_path, capsys):
    assert trilm(["quickstart", "--output_dir", str(tmp_path), "--max_steps", "6"]) == 0
    printed = capsys.readouterr().out
    for family, head in HEADS.items():
        assert f"saved in {tmp_path / family}" in printed
        assert head.from_pretrained(tmp_path / family).config.model_type == f"trilm_{family}"
        line = next(line for line in printed.splitlines() if line.startswith(family))
        start, end = (float(x) for x in re.findall(r"eval loss ([\d.]+) at step 0 -> ([\d.]+)", line)[0])
        assert end < start, line
    assert "AutoModelForCausalLM.from_pretrained" in printed and "Next:" in printed
