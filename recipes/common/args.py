"""`--config FILE.yaml` plus `--key value` flags, parsed into the libraries' own argument dataclasses.

The YAML gives the defaults, the flags override them (as in TRL's TrlParser and the alignment-handbook)."""

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .runtime import resolve_bf16

logger = logging.getLogger(__name__)


def launch_defaults() -> dict:
    """Defaults that depend on the machine: `use_cpu` where there is no GPU (so that bf16 autocast runs on
    the CPU, and under `torchrun` the processes train together over gloo instead of each alone). `bf16`
    follows the hardware in `parse_args`."""
    import torch

    accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    return {} if accelerator else {"use_cpu": True}


def parse_args(dataclass_types: tuple[type, ...], argv: list[str], prog: str, defaults: dict | None = None) -> tuple:
    """The dataclasses of `dataclass_types` from `--config FILE.yaml` and `--key value` flags (flags win over the
    YAML, the YAML over `defaults`). `--help` prints the short help (trilm's arguments, then the trainer's most
    used), `--help-all` every field of every class; both exit."""
    if "--help-all" in argv:
        full = HfArgumentParser(dataclass_types, prog=prog, allow_abbrev=False)
        full.add_argument("--config", help="YAML file whose keys give the defaults of the flags below")
        full.print_help()
        raise SystemExit(0)
    if wants_help(argv):
        print(short_help(dataclass_types, prog, defaults or {}))
        raise SystemExit(0)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    # No prefixes: `--learning_rat 0.001` is an unknown flag, not learning_rate.
    parser = HfArgumentParser(dataclass_types, prog=prog, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file whose keys give the defaults of the flags below")
    if defaults:
        parser.set_defaults(**defaults)
    values = load_yaml(known.config, parser) if known.config else {}
    bf16_reason = None
    if any(f.name == "bf16" for cls in dataclass_types for f in dataclasses.fields(cls)):
        rest, requested = take_bf16(rest, values.pop("bf16", "auto"))
        values["bf16"], bf16_reason = resolve_bf16(requested)
    parser.set_defaults(**values)
    *parsed, _ = parser.parse_args_into_dataclasses(args=rest + (["--config", known.config] if known.config else []))
    for args in parsed:
        if hasattr(args, "bf16"):
            args.bf16_reason = bf16_reason  # the run folder records the precision and why (output.write_arguments)
        if hasattr(args, "lr_scheduler_type"):
            fit_schedule(args, rest)
    return tuple(parsed)


def fit_schedule(args, argv: list[str]) -> None:
    """transformers' warmup_stable_decay takes its decay length in `lr_scheduler_kwargs` (`num_decay_steps`), and
    where warmup and decay do not fit in max_steps it cuts the warmup short with a jump into the decay. A
    schedule from the config file (a preset) is fitted to a shorter `--max_steps`: 10% warmup, 40% decay, with
    a warning, and its `num_decay_steps` dropped when the command line picks another schedule; one given on the
    command line that does not fit is an error, before any work."""
    given = {flag.split("=")[0] for flag in argv}
    decay = (args.lr_scheduler_kwargs or {}).get("num_decay_steps")
    if args.lr_scheduler_type != "warmup_stable_decay":
        if decay is not None and "--lr_scheduler_kwargs" in given:
            raise ValueError(f"num_decay_steps is warmup_stable_decay's; lr_scheduler_type {args.lr_scheduler_type.value} does not take it.")
        if decay is not None:  # a preset's warmup_stable_decay, replaced by another schedule on the command line
            args.lr_scheduler_kwargs = {key: value for key, value in args.lr_scheduler_kwargs.items() if key != "num_decay_steps"}
        return
    if decay is None:
        raise ValueError('lr_scheduler_type warmup_stable_decay needs its decay length: --lr_scheduler_kwargs \'{"num_decay_steps": N}\'.')
    warmup = args.get_warmup_steps(args.max_steps) if args.max_steps > 0 else 0
    if args.max_steps <= 0 or warmup + decay <= args.max_steps:
        return
    fitted_warmup, fitted_decay = args.max_steps // 10, max(1, round(0.4 * args.max_steps))
    problem = f"warmup_stable_decay: warmup_steps ({warmup}) + num_decay_steps ({decay}) exceed max_steps ({args.max_steps})"
    if given & {"--warmup_steps", "--lr_scheduler_kwargs"}:
        raise ValueError(
            f"{problem}, so the decay would begin before the warmup ends. Lower them, e.g. --warmup_steps {fitted_warmup} "
            f"--lr_scheduler_kwargs '{{\"num_decay_steps\": {fitted_decay}}}', or use --lr_scheduler_type cosine."
        )
    logger.warning(f"{problem}: fitted to warmup_steps {fitted_warmup} and num_decay_steps {fitted_decay}.")
    args.warmup_steps, args.lr_scheduler_kwargs = fitted_warmup, {**args.lr_scheduler_kwargs, "num_decay_steps": fitted_decay}


def wants_help(argv: list[str]) -> bool:
    return any(flag in ("-h", "--help", "--help-all") for flag in argv)


# The fields of the libraries' argument classes (TrainingArguments, TRL's configs and ModelConfig) that the short
# help lists; `--help-all` lists every one.
COMMON_FIELDS = (
    "output_dir", "do_train", "do_eval", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "bf16", "gradient_checkpointing", "torch_compile", "eval_strategy", "eval_steps", "save_strategy",
    "save_steps", "logging_steps", "load_best_model_at_end", "metric_for_best_model", "seed", "resume_from_checkpoint",
    "report_to", "push_to_hub", "hub_model_id", "predict_with_generate", "generation_num_beams", "label_names",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "load_in_4bit",
    "max_length", "packing", "assistant_only_loss", "beta", "loss_type", "num_generations", "max_completion_length",
    "num_iterations", "temperature", "reward_weights",
)


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in getattr(c, "__annotations__", {}))


def _metavar(field: dataclasses.Field) -> str:
    kind = str(field.type)
    for word, metavar in (("bool", "true|false"), ("dict", "MAPPING"), ("list", "A B ..."), ("float", "FLOAT"), ("int", "INT")):
        if word in kind:
            return metavar
    return "VALUE"


def short_help(dataclass_types: tuple[type, ...], prog: str, defaults: dict) -> str:
    """`--help`: `--config` first, then trilm's own arguments by class, then the most used fields of the
    libraries' classes; each flag once, its default where it has one."""
    lines = [f"usage: {prog} --config FILE.yaml [--key value ...]", "",
             "  --config FILE.yaml   a YAML file, or a preset's name (recipes/configs/), whose keys give the defaults of the flags below",
             "  --help-all           every field of the argument classes below (transformers' and TRL's included)"]
    for cls in dataclass_types:
        fields = [f for f in dataclasses.fields(cls) if f.init]
        own = [f for f in fields if _owner(cls, f.name).__module__.startswith("trilm.")]
        common = [f for f in fields if f not in own and f.name in COMMON_FIELDS]
        lines += ["", cls.__name__ + (f" (the most used of its {len(fields)} fields)" if len(own) < len(fields) else "") + ":"]
        for f in own + common:
            default = defaults.get(f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            text = " ".join(str(f.metadata.get("help", "")).replace("%%", "%").split())
            if f.name == "bf16":
                default = "auto"
            if default not in (None, "", [], {}, dataclasses.MISSING) and "default" not in text.lower():
                text += f" (default: {getattr(default, 'value', default)})"
            lines.append(f"  --{f.name} {_metavar(f)}".ljust(38) + (" " + text if text else ""))
    return "\n".join(lines)


def take_bf16(argv: list[str], configured) -> tuple[list[str], bool | None]:
    """`argv` without its `--bf16 VALUE` flags, and the bf16 asked for: the last flag's, else the YAML's;
    None where neither sets it or it says `auto` (then the hardware decides)."""
    requested, rest, index = configured, [], 0
    while index < len(argv):
        flag = argv[index]
        if flag == "--bf16" or flag.startswith("--bf16="):
            if "=" in flag:
                requested = flag.split("=", 1)[1]
            elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                requested, index = argv[index + 1], index + 1
            else:
                requested = True  # a bare --bf16, as HfArgumentParser reads it
        else:
            rest.append(flag)
        index += 1
    return rest, parse_bf16(requested)


def parse_bf16(value) -> bool | None:
    """True or False as HfArgumentParser reads a bool flag, or None for `auto`."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() == "auto":
        return None
    try:
        return string_to_bool(text)
    except argparse.ArgumentTypeError:
        raise ValueError(f"bf16={value!r} is invalid: use true, false or auto (auto, the default, follows the hardware).") from None


PRESETS = Path(__file__).parents[1] / "configs"  # recipes/configs


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
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument(f"--{name}")
    known, _ = pre.parse_known_args(argv)
    if getattr(known, name) is not None or not known.config:
        return getattr(known, name)
    path = Path(preset_path(known.config))
    values = yaml.safe_load(path.read_text()) if path.is_file() else None
    return values.get(name) if isinstance(values, dict) else None
