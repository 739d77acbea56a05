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
