"""`trilm finetune`: every task end to end through the CLI, the LoRA adapter round trip and `--merge`, the
tasks' data mappings on hand-made cases, and clear errors before any training starts."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM

from trilm.recipes import finetune
from trilm.recipes.tasks.classification import align_labels
from trilm.recipes.cli import main as trilm
from trilm.recipes.corpus import build_corpus
from trilm.recipes.common.data import read_conll, read_squad
from trilm.recipes.tasks.extractive_qa import answer_positions, best_answers, squad_scores, window_features
from trilm.recipes.common.models import CONFIGS
from trilm.recipes.tasks.sft import to_conversation
from trilm.tokenization import config_values, train_tokenizer

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}
LAYERS = {"encoder": {"num_hidden_layers": 1}, "decoder": {"num_hidden_layers": 1}, "seq2seq": {"encoder_layers": 1, "decoder_layers": 1}}
KINDS = {"encoder": "wordpiece", "decoder": "bpe", "seq2seq": "unigram"}


def corpus_texts() -> list[str]:
    corpus = build_corpus(0)
    texts = [row["text"] for row in corpus["text"]["train"][:300]]
    texts += [f"{row['question']} {row['answer']}" for row in corpus["qa"]["train"]]
    texts += [f"{row['source']} {row['target']}" for row in corpus["translation"]["train"][:500]]
    return texts + [" ".join(row["tokens"]) for row in corpus["tagging"]["train"][:300]]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny saved trilm model and trained tokenizer of each family, standing in for `trilm pretrain` output."""
    root, texts, folders = tmp_path_factory.mktemp("bases"), corpus_texts(), {}
    for family, auto_class in (("encoder", "AutoModelForMaskedLM"), ("decoder", "AutoModelForCausalLM"), ("seq2seq", "AutoModelForSeq2SeqLM")):
        tokenizer = train_tokenizer(texts=texts, kind=KINDS[family], family=family, vocab_size=400, **({"num_sentinels": 8} if family == "seq2seq" else {}))
        config = CONFIGS[family](**config_values(tokenizer, CONFIGS[family]), **SIZES, **LAYERS[family])
        torch.manual_seed(0)
        model = getattr(__import__("transformers"), auto_class).from_config(config)
        folders[family] = root / family
        model.save_pretrained(folders[family])
        tokenizer.save_pretrained(folders[family])
    return folders


def run_config(tmp_path: Path, name: str, **values) -> Path:
    """A YAML preset of a tiny fine-tuning run: a few steps on the built-in corpus, no checkpoints."""
    values = {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_train_samples": 64,
        "max_eval_samples": 12,
        "max_seq_length": 64,
        "learning_rate": 0.003,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "output_dir": str(tmp_path / name),
        "seed": 0,
        **values,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


TASKS = {  # name -> (task, family, metrics the run must report)
    "encoder-classification": ("sequence-classification", "encoder", ("eval_accuracy", "eval_f1")),
    "decoder-classification": ("sequence-classification", "decoder", ("eval_accuracy", "eval_f1")),
    "ner": ("token-classification", "encoder", ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy")),
    "qa": ("question-answering", "encoder", ("eval_exact_match", "eval_f1")),
    "translation": ("seq2seq", "seq2seq", ("eval_bleu", "eval_rouge1", "eval_rougeL")),
    "sft": ("sft", "decoder", ("eval_answer_accuracy", "eval_answer_accuracy_before_training")),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_fine_tunes_with_lora_on_the_builtin_corpus(tmp_path, bases, name):
    task, family, expected = TASKS[name]
    config = run_config(tmp_path, name, task=task, model_name_or_path=str(bases[family]), **({"doc_stride": 16} if task == "question-answering" else {}))
    assert trilm(["finetune", "--config", str(config)]) == 0
    folder = tmp_path / name
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "trilm_args.yaml", "metrics.json", "loss.png", "README.md"} <= names
    assert "predictions.jsonl" in names and not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in (*expected, "eval_loss", "train_loss", "train_runtime"):
        assert key in metrics, key
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and all("prediction" in row for row in predictions)
    assert yaml.safe_load((folder / "trilm_args.yaml").read_text())["task"] == task


def test_a_new_model_trains_in_full_and_a_checkpoint_is_evaluated_without_training(tmp_path):
    config = run_config(
        tmp_path, "new", task="sequence-classification", family="encoder", model={**SIZES, **LAYERS["encoder"]},
        tokenizer={"kind": "wordpiece", "vocab_size": 300}, max_steps=6,
    )
    assert trilm(["finetune", "--config", str(config)]) == 0
    trained = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert (tmp_path / "new" / "model.safetensors").is_file()  # in full: the whole model, no adapter
    again = run_config(tmp_path, "again", task="sequence-classification", model_name_or_path=str(tmp_path / "new"), use_peft=False, do_train=False)
    assert trilm(["finetune", "--config", str(again)]) == 0
    evaluated = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert "train_loss" not in evaluated
    assert evaluated["eval_accuracy"] == trained["eval_accuracy"] and evaluated["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-5)


def test_sft_trains_a_new_decoder_with_a_tokenizer_trained_on_the_conversations(tmp_path):
    config = run_config(tmp_path, "sft-new", task="sft", family="decoder", model={**SIZES, **LAYERS["decoder"]},
                        tokenizer={"kind": "bpe", "vocab_size": 320}, max_steps=2)
    assert trilm(["finetune", "--config", str(config)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft-new")
    assert 300 <= len(tokenizer) <= 330 and tokenizer.chat_template and "<|im_end|>" in tokenizer.get_vocab()
    assert tokenizer.tokenize("What colour is the owl?") != list("What colour is the owl?")  # merges learnt from the questions
    assert (tmp_path / "sft-new" / "model.safetensors").is_file()


def test_the_adapter_reloads_and_the_merged_checkpoint_predicts_the_same(tmp_path, bases):
    config = run_config(tmp_path, "lora", task="sequence-classification", model_name_or_path=str(bases["encoder"]), merge=True, learning_rate=0.03)
    trainer, _ = finetune.run(*finetune.parse(["--config", str(config)]))
    folder = tmp_path / "lora"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["Tamzo said the soup in Rafinport was not cold.", "The bread was bad."], padding=True, return_tensors="pt")
    with torch.no_grad():
        # The batch and the reloaded models are on the CPU, also where a GPU trained; without accelerate's autocast
        # wrapper (a bf16 run, where the hardware has bf16, leaves it on the forward): float32, as the reloads run.
        model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        trained = model.cpu().eval()(**batch).logits
        labels = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
        base = AutoModelForSequenceClassification.from_pretrained(bases["encoder"], **labels)
        reloaded = PeftModel.from_pretrained(base, folder).eval()(**batch).logits
        auto = AutoPeftModelForSequenceClassification.from_pretrained(folder).eval()(**batch).logits
        merged_model = AutoModelForSequenceClassification.from_pretrained(folder / "merged").eval()
        merged = merged_model(**batch).logits
    assert not (folder / "merged" / "adapter_config.json").exists() and merged_model.config.id2label[1] == "positive"
    adapter = load_file(folder / "adapter_model.safetensors")
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)  # trained: B starts at zero
    for logits in (reloaded, auto, merged):
        torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-5)
    # The adapter folder is itself a starting point: evaluated again without training, it scores the same.
    trained_metrics = json.loads((folder / "metrics.json").read_text())
    again = run_config(tmp_path, "again", task="sequence-classification", model_name_or_path=str(folder), do_train=False)
    assert trilm(["finetune", "--config", str(again)]) == 0
    evaluated = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert evaluated["eval_loss"] == pytest.approx(trained_metrics["eval_loss"], abs=1e-5)


def test_fine_tuning_starts_from_a_bert_folder_converted_through_interop(tmp_path, bases):
    tokenizer = AutoTokenizer.from_pretrained(bases["encoder"])
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    config = run_config(tmp_path, "ner-bert", task="token-classification", model_name_or_path=str(tmp_path / "bert"))
    assert trilm(["finetune", "--config", str(config)]) == 0
    adapter = json.loads((tmp_path / "ner-bert" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and "classifier" in adapter["modules_to_save"]
    assert "eval_f1" in json.loads((tmp_path / "ner-bert" / "metrics.json").read_text())


def test_translation_reads_line_aligned_files_and_translation_rows(tmp_path, bases):
    (tmp_path / "train.en").write_text("a cat\na dog\nthe red house\n" * 10)
    (tmp_path / "train.de").write_text("eine Katze\nein Hund\ndas rote Haus\n" * 10)
    config = run_config(tmp_path, "aligned", task="seq2seq", model_name_or_path=str(bases["seq2seq"]), train_file=str(tmp_path / "train.en"),
                        train_target_file=str(tmp_path / "train.de"), validation_split_percentage=20, max_eval_samples=None)
    assert trilm(["finetune", "--config", str(config)]) == 0
    predictions = [json.loads(line) for line in (tmp_path / "aligned" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {p["reference"] for p in predictions} <= {"eine Katze", "ein Hund", "das rote Haus"}
    rows = [{"translation": {"en": "a cat", "de": "eine Katze"}}] * 20
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config(tmp_path, "jsonl", task="seq2seq", model_name_or_path=str(bases["seq2seq"]), train_file=str(tmp_path / "pairs.jsonl"),
                        source_lang="en", target_lang="de", max_eval_samples=None)
    assert trilm(["finetune", "--config", str(config)]) == 0
    assert json.loads((tmp_path / "jsonl" / "predictions.jsonl").read_text().splitlines()[0])["reference"] == "eine Katze"


# ------------------------------------------------------------------------------------ hand-made cases
def test_word_labels_go_to_the_first_sub_token_only(bases):
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [3, 1, 0]) == [-100, 3, -100, 1, 0, -100, -100, -100]
    tokenizer = AutoTokenizer.from_pretrained(bases["encoder"])
    words = ["Tamzobelka", "lives", "in", "Rafinport"]
    encoded = tokenizer(words, is_split_into_words=True)
    labels = align_labels(encoded.word_ids(), [1, 0, 0, 2])
    assert len(encoded.word_ids()) > len(words) + 2  # the made-up words split into several sub-tokens
    firsts = [i for i, w in enumerate(encoded.word_ids()) if w is not None and (i == 0 or encoded.word_ids()[i - 1] != w)]
    assert [labels[i] for i in firsts] == [1, 0, 0, 2]
    assert all(label == -100 for i, label in enumerate(labels) if i not in firsts)


def qa_windows(bases, context: str, answer: str | None, max_length: int = 24, stride: int = 8):
    tokenizer = AutoTokenizer.from_pretrained(bases["encoder"])
    args = finetune.FinetuneArguments(task="question-answering", doc_stride=stride, version_2_with_negative=True)
    start = context.index(answer) if answer else None
    batch = {"question": ["Where?"], "context": [context], "example_index": [0],
             "answers": [{"text": [answer] if answer else [], "answer_start": [start] if answer else []}]}
    features = window_features(tokenizer, args, max_length, for_eval=True)(batch)
    return tokenizer, args, features


def test_qa_answers_map_to_the_window_that_holds_them(bases):
    context = " ".join(f"word{i}" for i in range(40)) + " the answer is Gudorport today " + " ".join(f"tail{i}" for i in range(10))
    _, args, features = qa_windows(bases, context, "Gudorport")
    starts, ends = features["start_positions"], features["end_positions"]
    holding = [i for i, s in enumerate(starts) if s != 0]
    assert len(starts) >= 3 and holding and holding[0] > 0  # not in the first window: found in a later one
    for i in holding:
        offsets = features["offset_mapping"][i]
        assert context[offsets[starts[i]][0] : offsets[ends[i]][1]] == "Gudorport"
    assert all(ends[i] == 0 for i in range(len(starts)) if i not in holding)  # the others point at CLS
    # Logits that favour the answer's tokens in its window map back to its characters.
    width = max(len(ids) for ids in features["input_ids"])
    start_logits, end_logits = torch.zeros(len(starts), width).numpy(), torch.zeros(len(starts), width).numpy()
    start_logits[holding[0], starts[holding[0]]] = end_logits[holding[0], ends[holding[0]]] = 10.0
    examples = [{"context": context}]
    assert best_answers(examples, features, start_logits, end_logits, args) == ["Gudorport"]


def test_qa_an_answer_across_a_window_edge_and_no_answer_point_at_cls(bases):
    tokenizer = AutoTokenizer.from_pretrained(bases["encoder"])
    context = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    encoded = tokenizer("Where?", context, truncation="only_second", max_length=12, stride=2,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
    answer = "eta theta iota kappa lambda"  # longer than the context part of any window
    for i in range(len(encoded["input_ids"])):
        assert answer_positions(encoded.sequence_ids(i), encoded["offset_mapping"][i], context.index(answer), answer) == (0, 0)
        assert answer_positions(encoded.sequence_ids(i), encoded["offset_mapping"][i], None, "") == (0, 0)
    _, args, features = qa_windows(bases, context, None)
    assert set(features["start_positions"]) == {0}
    width = max(len(ids) for ids in features["input_ids"])
    null = torch.zeros(len(features["input_ids"]), width).numpy()
    null[:, 0] = 10.0  # CLS outscores every span: SQuAD v2's empty answer
    assert best_answers([{"context": context}], features, null, null, args) == [""]


def test_qa_null_threshold_decides_between_the_best_span_and_no_answer(bases):
    """SQuAD v2 (run_qa's rule): answer nothing when the null score (CLS start + end) beats the best span's score
    by more than null_score_diff_threshold; v1 always answers."""
    context = "alpha beta gamma delta epsilon zeta"
    _, args, features = qa_windows(bases, context, "gamma", max_length=32)
    start, end = features["start_positions"][0], features["end_positions"][0]
    assert 0 < start <= end
    width = len(features["input_ids"][0])
    start_logits, end_logits = np.zeros((1, width), dtype=np.float32), np.zeros((1, width), dtype=np.float32)
    start_logits[0, start] = end_logits[0, end] = 3.0  # the span scores 6
    start_logits[0, 0] = end_logits[0, 0] = 4.0  # the null answer scores 8: 2 above the span
    examples = [{"context": context}]
    for threshold, expected in ((0.0, ""), (1.9, ""), (2.1, "gamma"), (-5.0, "")):
        args.null_score_diff_threshold = threshold
        assert best_answers(examples, features, start_logits, end_logits, args) == [expected], threshold
    args.version_2_with_negative, args.null_score_diff_threshold = False, 0.0
    assert best_answers(examples, features, start_logits, end_logits, args) == ["gamma"]


QA_ROWS = [  # (question, context, answer or None)
    ("Where does Kalo live?", "Kalo lives in Dunton and keeps a brown owl.", "Dunton"),
    ("What does Mira keep?", "Mira lives in Rafinport and keeps a black goat.", "black goat"),
    ("Who lives in Gudorport?", "Tamzo lives in Gudorport and likes rice.", "Tamzo"),
    ("What does Vutam eat?", "Vutam lives in Finsenburg and eats cheese.", "cheese"),
    ("Where does Pelt live?", "The owl is brown and the goat is black.", None),
]


def qa_file(path: Path, with_unanswerable: bool) -> str:
    rows = []
    for i, (question, context, answer) in enumerate(QA_ROWS):
        if answer is None and not with_unanswerable:
            continue
        answers = {"text": [answer], "answer_start": [context.index(answer)]} if answer else {"text": [], "answer_start": []}
        rows.append({"id": f"q{i}", "question": question, "context": context, "answers": answers})
    return write_jsonl(path, rows)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_qa_predicts_the_answers_it_was_trained_to_find(tmp_path, bases, v2, caplog):
    """Trained to memorise five questions (one unanswerable), the model answers the four it can, in both modes;
    v1 drops the unanswerable row, and says how many it dropped."""
    data = qa_file(tmp_path / "qa.jsonl", with_unanswerable=True)
    config = run_config(tmp_path, "qa", task="question-answering", model_name_or_path=str(bases["encoder"]), train_file=data,
                        validation_file=data, version_2_with_negative=v2, use_peft=False, max_steps=80, doc_stride=16, learning_rate=0.003,
                        per_device_train_batch_size=5, max_train_samples=None, max_eval_samples=None, warmup_steps=5)
    with caplog.at_level(logging.WARNING, logger="trilm.recipes.tasks.extractive_qa"):
        assert trilm(["finetune", "--config", str(config)]) == 0
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    message = ("version_2_with_negative false: dropped 1 of 5 {} rows that have no answer (set it true to train and score on "
               "unanswerable questions too).")
    assert dropped == ([] if v2 else [message.format("train"), message.format("validation")])
    predictions = {row["id"]: row["prediction"] for row in map(json.loads, (tmp_path / "qa" / "predictions.jsonl").read_text().splitlines())}
    expected = {f"q{i}": answer for i, (_, _, answer) in enumerate(QA_ROWS) if answer}
    assert {key: predictions[key] for key in expected} == expected
    assert ("q4" in predictions) is v2  # v1 dropped it from the validation split too
    metrics = json.loads((tmp_path / "qa" / "metrics.json").read_text())
    assert metrics["eval_f1"] >= (80 if v2 else 100)


def test_squad_scores_follow_the_official_definition():
    scores = squad_scores(["the Normans", "France", ""], [["Normans"], ["in France", "Paris"], []])
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 * (1 * 0.5) / 1.5 + 1) / 3)
    assert scores["no_answer_exact_match"] == 100.0 and scores["has_answer_exact_match"] == 50.0


def test_alpaca_rows_become_chats_and_only_assistant_tokens_carry_loss(tmp_path, bases):
    alpaca = to_conversation({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})
    assert alpaca == {"prompt": [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}], "completion": [{"role": "assistant", "content": "5"}]}
    assert to_conversation({"instruction": "Say hi.", "input": "", "response": "hi"})["prompt"][0]["content"] == "Say hi."
    assert to_conversation({"question": "What is 2 plus 2?", "answer": "4"})["completion"][0]["content"] == "4"
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(bases["decoder"])
    from datasets import Dataset

    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(bases["decoder"])
    chat = {"messages": [{"role": "user", "content": "What colour is the owl?"}, {"role": "assistant", "content": "grey"},
                         {"role": "user", "content": "And the fox?"}, {"role": "assistant", "content": "red"}]}
    for rows, config, answers in (
        ([alpaca], {}, ["5<|im_end|>"]),  # prompt/completion: completion_only_loss
        ([chat], {"assistant_only_loss": True}, ["grey<|im_end|>red<|im_end|>"]),  # conversations: generation markers
    ):
        args = SFTConfig(output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True, **config)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        for row, answer in zip(trainer.train_dataset, answers):
            kept = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
            assert tokenizer.decode(kept).replace("\n", "") == answer
            assert "<|im_start|>user" in tokenizer.decode(row["input_ids"])


def test_packed_conversations_do_not_attend_to_each_other(tmp_path, bases):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(bases["decoder"])
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(bases["decoder"]).eval()
    rows = [to_conversation({"question": q, "answer": a}) for q, a in (("What is 2 plus 3?", "5"), ("Where does Kalo live?", "Dunton"), ("Hi?", "hello"))]
    args = SFTConfig(output_dir=str(tmp_path / "packed"), packing=True, max_length=256, per_device_train_batch_size=3, report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0]
    starts = [i for i in range(len(positions)) if positions[i] == 0] + [len(positions)]
    assert batch["input_ids"].shape[0] == 1 and len(starts) == 4  # three conversations in one row
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for begin, end in zip(starts, starts[1:]):
            alone = model(input_ids=batch["input_ids"][:, begin:end]).logits[0]
            torch.testing.assert_close(packed[begin:end], alone, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to train fails the test: the errors below must come before training starts."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started"))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_bad_input_is_a_clear_value_error_before_training(tmp_path, bases, no_training):
    encoder, seq2seq = str(bases["encoder"]), str(bases["seq2seq"])
    labelled = write_jsonl(tmp_path / "labels.jsonl", [{"sentence": "good", "label": "positive"}, {"sentence": "meh", "label": "neutral"}] * 5)
    cases = [
        ({"task": "sequence-classification", "model_name_or_path": encoder, "train_file": labelled, "label_names": ["negative", "positive"]},
         r"row \d+: label 'neutral' is not one of label_names"),
        ({"task": "question-answering", "model_name_or_path": encoder, "train_file": write_jsonl(tmp_path / "qa.jsonl", [
            {"id": "q7", "question": "Where?", "context": "He lives in Paris.", "answers": {"text": ["Paris"], "answer_start": [3]}}] * 4)},
         r"row q7: the answer 'Paris' is not at answer_start=3"),
        ({"task": "seq2seq", "model_name_or_path": seq2seq, "train_file": write_jsonl(tmp_path / "s2s.jsonl", [
            {"source": "a cat", "target": "eine Katze"}, {"source": "a dog", "target": " "}] * 4)}, r"row 1 has an empty target"),
        ({"task": "sequence-classification", "model_name_or_path": encoder, "lora_target_modules": ["attn.qkv", "nonexistent_proj"]},
         r"nonexistent_proj"),
        ({"task": "token-classification", "model_name_or_path": str(bases["decoder"])}, r"takes a model of family encoder; a decoder model has no head for it"),
        ({"task": "sequence-classification", "model_name_or_path": encoder, "train_file": labelled, "text_column_name": "text"},
         r"no column 'text'; its columns are 'sentence', 'label'"),
        ({"task": "sequence-classification", "family": "encoder", "model": SIZES, "use_peft": True}, r"LoRA adapts a pretrained model"),
        ({"task": "sequence-classification", "model_name_or_path": encoder, "use_peft": False, "merge": True}, r"--merge true merges a LoRA adapter"),
        ({"task": "sequence-classification", "model_name_or_path": encoder, "use_peft": False, "load_in_4bit": True}, r"train LoRA adapters on them"),
        ({"task": "seq2seq", "model_name_or_path": seq2seq, "train_file": str(tmp_path / "s2s.jsonl"),
          "train_target_file": labelled}, r"line-aligned files must match"),
    ]
    for values, message in cases:
        with pytest.raises(ValueError, match=message):
            trilm(["finetune", "--config", str(run_config(tmp_path, "bad", **values))])
    with pytest.raises(ValueError, match="task='summarise' does not exist"):
        trilm(["finetune", "--task", "summarise"])


def test_qlora_quantizes_as_trl_configures_and_refuses_a_merge_float32_adapters_or_ppo():
    from types import SimpleNamespace

    from trl import ModelConfig

    from trilm.recipes.common.lora import check_adapter_options
    from trilm.recipes.common.models import ModelArguments, quantization_kwargs
    from trilm.recipes.rlhf import check_ppo_policy

    kwargs = quantization_kwargs(ModelConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", use_bnb_nested_quant=True, dtype="bfloat16"))
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and kwargs["device_map"] == {"": 0}
    assert quantization_kwargs(ModelConfig(load_in_8bit=True))["quantization_config"].load_in_8bit
    assert quantization_kwargs(ModelConfig()) == {} and quantization_kwargs(ModelArguments(family="decoder")) == {}
    qlora = SimpleNamespace(use_peft=True, quantized=True)
    with pytest.raises(ValueError, match="rounding it away"):
        check_adapter_options(True, qlora, SimpleNamespace(bf16=True))
    with pytest.raises(ValueError, match="set bf16 true"):
        check_adapter_options(False, qlora, SimpleNamespace(bf16=False))
    check_adapter_options(False, qlora, SimpleNamespace(bf16=True))
    check_adapter_options(True, SimpleNamespace(use_peft=True, quantized=False), SimpleNamespace(bf16=False))
    with pytest.raises(ValueError, match="algorithm ppo builds its value model"):
        check_ppo_policy("ppo", qlora)
    check_ppo_policy("grpo", qlora)


# ------------------------------------------------------------------------------------ file layouts
def test_conll_layouts_and_squad_json_load(tmp_path):
    (tmp_path / "a.conll").write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    assert read_conll(str(tmp_path / "a.conll")) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}, {"tokens": ["Peter"], "tags": ["B-PER"]}]
    (tmp_path / "b.iob2").write_text("# sent_id = 1\n1\tObama\tB-PER\t-\t-\n2\twrote\tO\t-\t-\n\n")
    assert read_conll(str(tmp_path / "b.iob2")) == [{"tokens": ["Obama", "wrote"], "tags": ["B-PER", "O"]}]
    squad = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "In France.", "qas": [
        {"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}], "is_impossible": False},
        {"id": "2", "question": "Who?", "answers": [], "is_impossible": True}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    rows = read_squad(str(tmp_path / "squad.json"))
    assert rows[0]["answers"] == {"text": ["France"], "answer_start": [3]} and rows[1]["answers"] == {"text": [], "answer_start": []}


@pytest.mark.realdata
def test_the_shared_ner_and_squad_files_load(shared_data):
    sentences = read_conll(str(shared_data / "uner_en_pud-ud-test.iob2"))
    assert len(sentences) == 1000 and {"B-PER", "I-LOC", "O"} <= {t for s in sentences for t in s["tags"]}
    rows = read_squad(str(shared_data / "squad_v2.0_dev_first4articles.json"))
    assert len(rows) > 1000 and any(not r["answers"]["text"] for r in rows)
    for row in rows:
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start : start + len(text)] == text


@pytest.mark.realdata
def test_every_finetune_preset_parses(shared_data, monkeypatch):
    monkeypatch.chdir(Path(finetune.__file__).parent.parent)  # the presets name ../shared/data from the repository root
    presets = {"finetune-sst2.yaml": "sequence-classification", "finetune-ner.yaml": "token-classification",
               "finetune-squad.yaml": "question-answering", "sft-alpaca.yaml": "sft", "translate-multi30k.yaml": "seq2seq"}
    for preset, task in presets.items():
        argv = ["--config", preset] + (["--model_name_or_path", "someone/base-model"] if preset != "translate-multi30k.yaml" else [])
        assert finetune.peek_option(argv, "task") == task
        model_args, data_args, args, training_args = finetune.parse(argv)
        assert args.task == task and Path(data_args.train_file).is_file(), preset
        assert model_args.use_peft == (preset not in ("finetune-sst2.yaml", "translate-multi30k.yaml", "finetune-squad.yaml")), preset


def test_a_small_run_logs_about_ten_points_plots_them_and_its_adapter_keeps_the_label_names(tmp_path, bases, monkeypatch):
    """60 rows, Trainer's default logging_steps (500): the run still logs ~10 points, loss.png has them on an axis
    named for the task, and a pipeline on the merged copy gives the label names, not LABEL_0/LABEL_1."""
    from transformers import pipeline

    from trilm.recipes.common import output

    plotted = {}
    plot = output.plot_loss
    monkeypatch.setattr(output, "plot_loss", lambda history, path, title, unit: plotted.update(curves=output.loss_curves(history), unit=unit) or plot(history, path, title, unit))
    rows = [{"sentence": f"the food was {word}", "label": label} for word, label in (("good", "positive"), ("awful", "negative"))] * 30
    config = run_config(tmp_path, "small", task="sequence-classification", model_name_or_path=str(bases["encoder"]),
                        train_file=write_jsonl(tmp_path / "rows.jsonl", rows), max_steps=-1, num_train_epochs=3, max_train_samples=None, merge=True)
    values = yaml.safe_load(config.read_text())
    del values["logging_steps"]
    config.write_text(yaml.safe_dump(values))
    trainer, _ = finetune.run(*finetune.parse(["--config", str(config)]))
    train_points, _ = plotted["curves"]
    assert trainer.args.logging_steps == 500 and trainer.state.max_steps < 50 and len(train_points) >= 8
    assert plotted["unit"] == "cross-entropy per example" and (tmp_path / "small" / "loss.png").stat().st_size > 0
    classify = pipeline("text-classification", model=str(tmp_path / "small" / "merged"))
    assert classify("the food was good")[0]["label"] in ("positive", "negative")
