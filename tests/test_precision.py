"""bf16 follows the hardware unless the user sets it (issue: fast on the user's machine). The capability
queries are mocked: each case is the decision a run would take on that machine."""

import logging

import pytest
import torch
import yaml
from transformers import TrainingArguments

from trilm.recipes.common import runtime
from trilm.recipes.common.args import parse_args
from trilm.recipes.common.output import write_arguments


def machine(monkeypatch, *, cuda=None, capability="AVX2", avx512_bf16=False, amx=False, onednn=True, arch="x86_64"):
    """Pretend to run on a machine: `cuda` None for none, else whether that GPU supports bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bool(cuda))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a GPU")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(runtime, "onednn_bf16", lambda: onednn)
    monkeypatch.setattr(runtime.platform, "machine", lambda: arch)


def parsed_bf16(argv, tmp_path, config=None):
    if config is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = ["--config", str(path), *argv]
    (args,) = parse_args((TrainingArguments,), [*argv, "--output_dir", str(tmp_path / "run"), "--use_cpu", "true"], "trilm test")
    return args


@pytest.mark.parametrize(
    "hardware, expected",
    [
        (dict(capability="AVX2"), False),  # most laptops and many cloud VMs: bf16 is emulated
        (dict(capability="AVX512"), False),  # AVX-512 without its bf16 extension: still emulated
        (dict(capability="AVX512", avx512_bf16=True), True),
        (dict(capability="AVX512", amx=True), True),
        (dict(capability="AVX2", avx512_bf16=True, onednn=False), False),  # CPUID says yes, oneDNN is capped (ONEDNN_MAX_CPU_ISA)
        (dict(cuda=True), True),
        (dict(cuda=False), False),  # a GPU without bf16 (pre-Ampere)
        (dict(arch="aarch64", capability="DEFAULT", onednn=True), True),  # Arm with bf16: oneDNN's answer
    ],
)
def test_bf16_unset_follows_the_hardware(monkeypatch, tmp_path, hardware, expected):
    machine(monkeypatch, **hardware)
    args = parsed_bf16([], tmp_path)
    assert args.bf16 is expected and args.bf16_reason.startswith("auto: ")
    # `auto` in a YAML or on the command line is the same as leaving it unset.
    assert parsed_bf16([], tmp_path, {"bf16": "auto"}).bf16 is expected
    assert parsed_bf16(["--bf16", "auto"], tmp_path).bf16 is expected


def test_explicit_bf16_true_is_kept_with_one_warning_where_emulated(monkeypatch, tmp_path, caplog):
    machine(monkeypatch, capability="AVX2")
    with caplog.at_level(logging.WARNING, logger="trilm.recipes.common.runtime"):
        args = parsed_bf16(["--bf16", "true"], tmp_path)
    assert args.bf16 is True and args.bf16_reason.startswith("set: ")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulated" in warnings[0] and "slower" in warnings[0] and "AVX2" in warnings[0]
    caplog.clear()
    machine(monkeypatch, capability="AVX512", amx=True)  # where it is native, no warning
    with caplog.at_level(logging.WARNING, logger="trilm.recipes.common.runtime"):
        assert parsed_bf16(["--bf16=true"], tmp_path).bf16 is True
    assert not caplog.records


def test_explicit_bf16_false_is_kept_and_the_flag_beats_the_yaml(monkeypatch, tmp_path):
    machine(monkeypatch, capability="AVX512", amx=True)
    assert parsed_bf16(["--bf16", "false"], tmp_path).bf16 is False
    assert parsed_bf16([], tmp_path, {"bf16": False}).bf16 is False
    assert parsed_bf16(["--bf16", "true"], tmp_path, {"bf16": False}).bf16 is True
    with pytest.raises(ValueError, match="bf16='fast' is invalid: use true, false or auto"):
        parsed_bf16(["--bf16", "fast"], tmp_path)


def test_the_resolved_precision_and_why_land_in_trilm_args(monkeypatch, tmp_path):
    machine(monkeypatch, capability="AVX2")
    args = parsed_bf16([], tmp_path)
    write_arguments(str(tmp_path / "run"), args)
    text = (tmp_path / "run" / "trilm_args.yaml").read_text()
    assert yaml.safe_load(text)["bf16"] is False
    assert "# precision: float32\n" in text and "# precision_reason: auto: cpu capability AVX2, no native bf16\n" in text
    assert f"# num_threads: {torch.get_num_threads()}\n" in text


def test_threads_default_to_the_physical_cores_unless_omp_num_threads_says(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "physical_cores", lambda: 1)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        torch.set_num_threads(2)
        assert runtime.configure_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert runtime.configure_threads() == 2  # the user's setting wins
    finally:
        torch.set_num_threads(before)
    assert runtime.physical_cores() >= 1
