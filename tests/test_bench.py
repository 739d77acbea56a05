"""`trilm bench` runs every family against its transformers reference and reports what the issue asks
for. (Speed itself is measured by running the bench, never asserted in tests.)"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from trilm.recipes.cli import main as trilm
from trilm.recipes.common.runtime import tune_cpu_allocator

from .conftest import TINY

QUICK = ["--warmup", "1", "--rounds", "2", "--min_round_seconds", "0.001", "--new_tokens", "4", "--prompt_len", "3"]
BERT_LIKE = dict(
    norm_type="layernorm", norm_bias=True, norm_position="post", position_embedding_type="learned", mlp_type="plain",
    hidden_act="gelu", attention_bias=True, mlp_bias=True, embedding_norm=True,
)
PRESETS = {
    "decoder": {**TINY, "num_hidden_layers": 2, "bos_token_id": 1, "eos_token_id": 2},
    "encoder": {**TINY, **BERT_LIKE, "num_key_value_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2},
    "seq2seq": {
        **TINY, **BERT_LIKE, "num_key_value_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "position_offset": 2,
        "lm_head_bias": True, "eos_token_id": 2, "decoder_start_token_id": 2, "norm_eps": 1e-5,
    },
}


def preset(tmp_path, family, **model):
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump({"family": family, "model": {**PRESETS[family], **model}, "batch_size": 2, "seq_len": 8}))
    return str(path)


@pytest.mark.parametrize("family", PRESETS)
def test_bench_compares_with_the_reference_and_writes_json(tmp_path, capsys, family):
    output = tmp_path / "bench.json"
    argv = ["bench", "--config", preset(tmp_path, family), "--compare", "true", "--output", str(output), *QUICK]
    assert trilm([*argv, "--generate_batch_sizes", "1", "2"]) == 0
    report = json.loads(output.read_text())
    assert report["cpu_allocator_tuned"] is (sys.platform.startswith("linux") and not torch.cuda.is_available())  # default --tune_allocator true, on CPU
    train = report["train"]
    assert train["flops_per_step"] > 0 and train["matmul_peak_flops"] > 0
    for name in ("trilm", "reference"):
        row = train[name]
        assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1.5
        assert len(row["rounds_ms"]) == 2 and isinstance(row["peak_memory_mb"], float)
    assert len(train["ratio"]["rounds"]) == 2 and train["ratio"]["median"] > 0
    if family == "encoder":
        assert "generate" not in report
    else:
        for batch in ("batch_1", "batch_2"):
            entry = report["generate"][batch]
            assert entry["trilm"]["new_tokens_per_s"] > 0 and entry["speedup"] > 0
            assert entry["same_tokens"] is True  # identical weights generate identical greedy tokens
    printed = capsys.readouterr().out
    assert "ratio trilm/reference" in printed and "MFU" in printed
    # MFU means little without the instructions it ran on: the capability is printed beside it.
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"cpu capability {report['cpu_capability']}" in printed


def test_bench_bfloat16_and_mode_flags(tmp_path):
    output = tmp_path / "bench.json"
    argv = ["bench", "--config", preset(tmp_path, "decoder"), "--dtype", "bfloat16", "--mode", "generate", "--output", str(output)]
    assert trilm([*argv, *QUICK, "--generate_batch_sizes", "1"]) == 0
    report = json.loads(output.read_text())
    assert "train" not in report and "reference" not in report["generate"]["batch_1"]


def test_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode="):
        trilm(["bench", "--config", preset(tmp_path, "decoder"), "--mode", "fast"])
    with pytest.raises(ValueError, match="norm_position"):  # a modern encoder has no BERT equivalent
        trilm(["bench", "--config", preset(tmp_path, "encoder", norm_position="pre"), "--compare", "true", *QUICK])


def test_cpu_allocator_tuning_takes_effect_on_linux_and_can_be_undone():
    linux = sys.platform.startswith("linux")  # mallopt is glibc's; elsewhere the call does nothing
    assert tune_cpu_allocator() is linux
    assert tune_cpu_allocator(keep_freed_memory=False) is linux


def test_peak_memory_sees_what_a_block_allocates():
    """The CPU peak is the process RSS above its level on entry, sampled while the block runs (in a fresh
    process: one whose heap already holds freed memory serves a new tensor from it, and its RSS does not grow)."""
    code = """
import time, torch
from trilm.recipes.bench import PeakMemory
with PeakMemory(torch.device("cpu")) as small:
    time.sleep(0.02)
with PeakMemory(torch.device("cpu")) as large:
    block = torch.ones(64 * 2**20)  # 256 MB, written
    time.sleep(0.02)
    del block
print(small.peak_bytes, large.peak_bytes)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    small, large = map(int, result.stdout.split())
    assert large > 200 * 2**20 > small
