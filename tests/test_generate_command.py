"""`trilm generate` end to end for each family, the chat loop driven through stdin, and its errors."""

import io
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from trilm.recipes.cli import main as trilm
from tests.test_finetune import bases  # noqa: F401  (the module's tiny saved model of each family)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_decoder_continues_prompts_from_a_file_as_generate_does(tmp_path, bases, capsys):
    (tmp_path / "prompts.txt").write_text("Where does Kalo live\n\nWhat is 2 plus\n")
    out = tmp_path / "out.jsonl"
    assert trilm(["generate", "--model_name_or_path", str(bases["decoder"]), "--prompt_file", str(tmp_path / "prompts.txt"),
                  "--max_new_tokens", "5", "--output_file", str(out)]) == 0
    rows = read_rows(out)
    assert [row["prompt"] for row in rows] == ["Where does Kalo live", "What is 2 plus"]  # blank lines skipped
    tokenizer = AutoTokenizer.from_pretrained(bases["decoder"])
    model = AutoModelForCausalLM.from_pretrained(bases["decoder"]).eval()
    inputs = tokenizer(rows[0]["prompt"], return_tensors="pt", add_special_tokens=False)
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert rows[0]["output"] == tokenizer.decode(expected[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert rows[0]["output"] in capsys.readouterr().out  # streamed to the terminal


def test_sampling_follows_the_seed(tmp_path, bases):
    outputs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        out = tmp_path / f"{name}.jsonl"
        trilm(["generate", "--model_name_or_path", str(bases["decoder"]), "--prompt", "Kalo", "--do_sample", "true", "--top_k", "0",
               "--max_new_tokens", "12", "--seed", str(seed), "--stream", "false", "--output_file", str(out)])
        outputs.append(read_rows(out)[0]["output"])
    assert outputs[0] == outputs[1] != outputs[2]


def test_the_chat_loop_reads_turns_from_stdin_and_keeps_the_conversation(tmp_path, bases, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Where does Kalo live?\n\nWhat is 2 plus 2?\n/exit\nnever read\n"))
    out = tmp_path / "chat.jsonl"
    assert trilm(["generate", "--model_name_or_path", str(bases["decoder"]), "--chat", "true", "--max_new_tokens", "4",
                  "--system_prompt", "Answer briefly.", "--output_file", str(out)]) == 0
    rows = read_rows(out)
    assert [row["prompt"] for row in rows] == ["Where does Kalo live?", "What is 2 plus 2?"]
    assert capsys.readouterr().out.count("assistant: ") == 2


def test_a_seq2seq_model_translates_with_beams(tmp_path, bases):
    out = tmp_path / "out.jsonl"
    assert trilm(["generate", "--model_name_or_path", str(bases["seq2seq"]), "--prompt", "Kalo lives in Senton.", "--num_beams", "2",
                  "--max_new_tokens", "6", "--source_prefix", "translate: ", "--output_file", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(bases["seq2seq"])
    model = AutoModelForSeq2SeqLM.from_pretrained(bases["seq2seq"]).eval()
    expected = model.generate(**tokenizer("translate: Kalo lives in Senton.", return_tensors="pt"), num_beams=2, max_new_tokens=6, do_sample=False)
    assert read_rows(out)[0]["output"] == tokenizer.decode(expected[0], skip_special_tokens=True).strip()


def test_an_encoder_fills_masks_with_ranked_candidates(tmp_path, bases):
    tokenizer = AutoTokenizer.from_pretrained(bases["encoder"])
    out = tmp_path / "out.jsonl"
    prompt = f"Kalo has a {tokenizer.mask_token} and a {tokenizer.mask_token}."
    assert trilm(["generate", "--model_name_or_path", str(bases["encoder"]), "--prompt", prompt, "--num_candidates", "3",
                  "--output_file", str(out)]) == 0
    slots = read_rows(out)[0]["candidates"]
    assert len(slots) == 2 and all(len(slot) == 3 for slot in slots)
    assert all(slot[0][1] >= slot[1][1] >= slot[2][1] > 0 for slot in slots)


def test_generate_errors_say_what_to_do(tmp_path, bases):
    with pytest.raises(ValueError, match="exactly one of --prompt, --prompt_file, or --chat"):
        trilm(["generate", "--model_name_or_path", str(bases["decoder"])])
    with pytest.raises(ValueError, match="prompt_file=.*not found"):
        trilm(["generate", "--model_name_or_path", str(bases["decoder"]), "--prompt_file", str(tmp_path / "none.txt")])
    with pytest.raises(ValueError, match="put \\[MASK\\] in the prompt"):
        trilm(["generate", "--model_name_or_path", str(bases["encoder"]), "--prompt", "no mask here"])
    with pytest.raises(ValueError, match="talks to a decoder"):
        trilm(["generate", "--model_name_or_path", str(bases["seq2seq"]), "--chat", "true"])
    with pytest.raises(ValueError, match="missing: no such folder or file here"):
        trilm(["generate", "--model_name_or_path", str(tmp_path / "missing"), "--prompt", "hi"])
