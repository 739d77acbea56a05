"""`--config FILE.yaml` plus `--key value` flags, parsed into the libraries' own argument dataclasses.

The YAML gives the defaults, the flags override them (as in TRL's TrlParser and the alignment-handbook)."""

import argparse
from pathlib import Path

import yaml
from transformers import HfArgumentParser


def launch_defaults() -> dict:
    """Defaults that depend on the machine: `use_cpu` where there is no GPU (so that bf16 autocast runs on
    the CPU, and under `torchrun` the processes train together over gloo instead of each alone)."""
    import torch

    accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    return {} if accelerator else {"use_cpu": True}


def parse_args(dataclass_types: tuple[type, ...], argv: list[str], prog: str, defaults: dict | None = None) -> tuple:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(dataclass_types, prog=prog)
    parser.add_argument("--config", help="YAML file whose keys give the defaults of the flags below")
    if defaults:
        parser.set_defaults(**defaults)
    if known.config:
        parser.set_defaults(**load_yaml(known.config, parser))
    *parsed, _ = parser.parse_args_into_dataclasses(args=rest + (["--config", known.config] if known.config else []))
    return tuple(parsed)


PRESETS = Path(__file__).parent / "configs"


def preset_path(path: str) -> str:
    """`path`, or the preset shipped with trilm of that name (--config pretrain-decoder-tiny.yaml)."""
    return str(PRESETS / path) if not Path(path).is_file() and (PRESETS / path).is_file() else path


def load_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    path = preset_path(path)
    if not Path(path).is_file():
        raise ValueError(f"Config file not found: {path} (nor a preset of that name in {PRESETS}).")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Config file {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of argument names to values.")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Config file {path} has unknown keys: {', '.join(unknown)}. Run with --help for the accepted ones.")
    return values


def peek_option(argv: list[str], name: str):
    """The value of `--name` from the command line, else from the `--config` YAML, before full parsing (a
    recipe picks its argument classes by it, as `task` picks the trainer's)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument(f"--{name}")
    known, _ = pre.parse_known_args(argv)
    if getattr(known, name) is not None or not known.config:
        return getattr(known, name)
    path = Path(preset_path(known.config))
    values = yaml.safe_load(path.read_text()) if path.is_file() else None
    return values.get(name) if isinstance(values, dict) else None
