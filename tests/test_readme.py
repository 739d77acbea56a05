"""Every Python block of the README runs as written, each on its own in a fresh directory."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(tmp_path, index):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------------------------- the shell examples
SHELL_LINES = [line for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL) for line in block.splitlines()]
# What each command needs to run in seconds here; the examples run as written otherwise, in order, each on the
# folders the ones before it made.
QUICK = {
    "quickstart": ["--max_steps", "2", "--max_eval_samples", "8"],
    "pretrain": ["--max_steps", "2", "--max_eval_samples", "8", "--eval_strategy", "no"],
    "finetune": ["--max_steps", "2", "--max_eval_samples", "8"],
    "reward": ["--max_steps", "2", "--max_eval_samples", "8", "--eval_strategy", "no"],
    "dpo": ["--max_steps", "2", "--max_eval_samples", "8", "--eval_strategy", "no"],
    "rlhf": ["--max_steps", "2", "--max_eval_samples", "8"],
    "generate": ["--max_new_tokens", "4"],
    "bench": ["--batch_size", "1", "--seq_len", "16", "--warmup", "1", "--rounds", "1", "--min_round_seconds", "0.001",
              "--new_tokens", "2", "--prompt_len", "3", "--generate_batch_sizes", "1"],
}


def readme_commands() -> list[list[str]]:
    """The `trilm ...` lines of the README's bash blocks, comments and optional `[...]` parts left out."""
    commands = []
    for line in SHELL_LINES:
        line = re.sub(r"\s\[--[^]]*\]", "", line.split("  #")[0]).strip()
        if line.startswith("trilm "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_shows_every_command():
    shown = {argv[0] for argv in readme_commands()}
    assert shown == {"quickstart", "pretrain", "finetune", "reward", "rlhf", "dpo", "generate", "export", "push", "corpus", "tokenizer", "bench"}


@pytest.mark.realdata
def test_readme_shell_examples_run_in_order(tmp_path, shared_data, monkeypatch, captured_uploads, capsys):
    """Each example on the folders the earlier ones made (e.g. `--full` and the SFT example make runs/quickstart/sft,
    which reward, rlhf, dpo, generate and push use); the presets' ../shared/data resolves as from the repository."""
    import io

    from trilm.recipes.cli import main as trilm

    work = tmp_path / "trilm"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)
    monkeypatch.chdir(work)
    for argv in readme_commands():
        monkeypatch.setattr(sys, "stdin", io.StringIO("Where does Kalo Mira live?\n/exit\n"))
        assert trilm([*argv, *QUICK.get(argv[0], [])]) == 0, argv
    assert captured_uploads and {"README.md", "trilm_args.yaml"} <= set(captured_uploads[0]["files"])
    for folder in ("quickstart/encoder", "quickstart/sft", "classify", "finetune-sst2", "translate", "reward", "grpo", "ppo", "dpo"):
        assert (work / "runs" / folder / "metrics.json").is_file(), folder
    assert list((work / "runs" / "export" / "gguf").glob("*.gguf")) and (work / "runs" / "tok" / "tokenizer.json").is_file()
