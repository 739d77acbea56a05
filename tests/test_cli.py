"""The `trilm` console script: input errors as one line and exit status 2, no argument prefixes."""

import sys

import pytest

from trilm.recipes.cli import console_main


def run(monkeypatch, capsys, *argv) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["trilm", *argv])
    status = console_main()
    return status, capsys.readouterr().err


def test_an_input_error_is_one_line_and_exit_status_2(monkeypatch, capsys, tmp_path):
    status, err = run(monkeypatch, capsys, "pretrain", "--config", str(tmp_path / "missing.yaml"))
    assert status == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"trilm pretrain: error: Config file not found: {tmp_path / 'missing.yaml'}")
    assert "--debug" in err


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    with pytest.raises(ValueError, match="Config file not found"):
        run(monkeypatch, capsys, "pretrain", "--config", str(tmp_path / "missing.yaml"), "--debug")
    monkeypatch.setenv("TRILM_DEBUG", "1")
    with pytest.raises(ValueError, match="Config file not found"):
        run(monkeypatch, capsys, "pretrain", "--config", str(tmp_path / "missing.yaml"))


def test_a_prefix_of_a_flag_is_an_error_not_the_flag(monkeypatch, capsys):
    """argparse's allow_abbrev would read `--learning_rat 0.001` as learning_rate."""
    status, err = run(monkeypatch, capsys, "pretrain", "--config", "pretrain-decoder-tiny.yaml", "--learning_rat", "0.001")
    assert status == 2 and "--learning_rat" in err and "Traceback" not in err
    status, err = run(monkeypatch, capsys, "export", "--model_name_or", "x", "--output_dir", "y")
    assert status == 2 and "--model_name_or" in err


def test_unexpected_exceptions_keep_their_traceback(monkeypatch, capsys):
    from trilm.recipes import cli

    def broken(argv):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "corpus", ("broken", broken))
    with pytest.raises(RuntimeError, match="a bug"):
        run(monkeypatch, capsys, "corpus")


COMMANDS = ["quickstart", "corpus", "tokenizer", "pretrain", "finetune", "reward", "rlhf", "dpo", "generate", "push", "export", "bench"]


def help_text(monkeypatch, capsys, *argv) -> str:
    monkeypatch.setattr(sys, "argv", ["trilm", *argv])
    with pytest.raises(SystemExit) as stop:
        console_main()
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_short_with_config_first_and_each_flag_once(monkeypatch, capsys, command):
    """Without --task (finetune) too; trilm's own arguments come before the trainer's."""
    text = help_text(monkeypatch, capsys, command, "--help")
    flags = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
    assert len(text.splitlines()) <= 150 and flags[0] == "--config" and len(flags) == len(set(flags)), text
    if "--output_dir" in flags and "--learning_rate" in flags:
        headers = [line for line in text.splitlines() if line and not line.startswith((" ", "usage"))]
        assert "TrainingArguments" in headers[-1] or "Config" in headers[-1], headers  # the trainer's class last


def test_help_all_lists_every_field_of_the_trainers_arguments(monkeypatch, capsys):
    short = help_text(monkeypatch, capsys, "finetune", "--task", "sft", "--help")
    full = help_text(monkeypatch, capsys, "finetune", "--task", "sft", "--help-all")
    assert "--dataset_text_field" in full and "--dataset_text_field" not in short  # an SFTConfig field
    assert len(full.splitlines()) > 3 * len(short.splitlines())


def test_a_missing_model_folder_is_named_before_any_hub_call(monkeypatch, capsys, tmp_path):
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("the Hub was asked"))
    monkeypatch.chdir(tmp_path)
    for argv in (["finetune", "--task", "sft", "--model_name_or_path", "runs/sft-typo"],
                 ["generate", "--model_name_or_path", "./runs/nope", "--prompt", "hi"],
                 ["pretrain", "--family", "decoder", "--tokenizer_name_or_path", "../tokenizers/mine"]):
        status, err = run(monkeypatch, capsys, *argv)
        assert status == 2 and err.count("\n") == 1 and "no such folder or file here" in err and "Traceback" not in err, err


def test_a_hub_name_that_cannot_be_reached_offline_is_one_line(tmp_path):
    import os
    import subprocess

    code = "import sys; from trilm.recipes.cli import console_main; sys.exit(console_main())"
    result = subprocess.run([sys.executable, "-c", code, "generate", "--model_name_or_path", "nobody-here/no-such-model", "--prompt", "hi"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("trilm generate: error: nobody-here/no-such-model is no folder here")
