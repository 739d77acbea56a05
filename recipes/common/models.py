"""Model and tokenizer loading shared by every recipe: a new model from `family` + `model:` config fields,
or `model_name_or_path` (a trilm checkpoint, or a Llama / BERT / BART folder converted through interop);
`tokenizer_name_or_path`, or a tokenizer trained on the training text from `tokenizer:`. Tokenizer and
model are checked to agree before training starts."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)

import trilm.modeling  # noqa: F401  (registers the Auto classes)
from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig
from trilm.modeling.interop import from_transformers, sentence_transformers_fields
from trilm.tokenization import byte_level_tokenizer, check_tokenizer_matches, config_values, train_tokenizer

# The one table of the three families: config class, model type, pretraining head.
CONFIGS = {"encoder": TrilmEncoderConfig, "decoder": TrilmDecoderConfig, "seq2seq": TrilmSeq2SeqConfig}
FAMILIES = tuple(CONFIGS)
FAMILY_OF_MODEL_TYPE = {config.model_type: family for family, config in CONFIGS.items()}
# transformers model types that interop converts, and the family they become.
CONVERTIBLE = {"llama": "decoder", "qwen2": "decoder", "qwen3": "decoder", "bert": "encoder", "bart": "seq2seq"}
PRETRAINING_HEADS = {"encoder": AutoModelForMaskedLM, "decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}
TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram", "byte")


def looks_local(name: str) -> bool:
    """Whether `name` means a path on this machine rather than a Hub id (`namespace/name`): it starts with `.`,
    `/`, `~` or `runs/`, has more than one `/`, ends with a file suffix such as `.gguf`, or its first part is
    a folder here."""
    first = name.split("/", 1)[0]
    return (name.startswith((".", "/", "~", "runs/")) or name.count("/") > 1 or "\\" in name
            or Path(name).suffix in (".gguf", ".json", ".yaml", ".safetensors") or (first != name and Path(first).is_dir()))


def check_source(name: str | None, option: str) -> None:
    """A ValueError, before any Hub call, where `name` is meant as a local folder or file and is none."""
    if name is not None and not Path(name).expanduser().exists() and looks_local(name):
        raise ValueError(f"{option}={name}: no such folder or file here (check the path; a recipe's output_dir holds a checkpoint).")


def gguf_file(name: str) -> tuple[str, str] | None:
    """(folder, file name) of a `.gguf` file, which transformers' GGUF loader reads (dequantized) with the `gguf`
    package; None for anything else."""
    if Path(name).suffix != ".gguf":
        return None
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"{name} is a GGUF file, which transformers reads with the gguf package: pip install 'trilm[gguf]'.")
    return str(Path(name).parent), Path(name).name


def source_config(name: str):
    """The transformers config of a checkpoint folder, a Hub name or a `.gguf` file, with a one-line error where
    a folder holds none, or a Hub model is not there or the Hub cannot be reached."""
    gguf = gguf_file(name)
    if gguf:
        return AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1])
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise ValueError(f"{name} holds no config.json: it is no checkpoint folder (a recipe's output_dir is one).")
    try:
        return AutoConfig.from_pretrained(name)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{name} is no folder here, and no Hub model could be loaded under that name: {reason}") from None


def as_mapping(value, name: str) -> dict:
    """A `model:` / `tokenizer:` value: a mapping from YAML, or a YAML/JSON string from the command line."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of field names to values, e.g. --{name} '{{hidden_size: 128}}'; got {value!r}.")
    return value


@dataclass
class ModelArguments:
    family: str | None = field(default=None, metadata={"help": f"for a new model: {', '.join(CONFIGS)}"})
    model: dict | str | None = field(default=None, metadata={"help": "config fields of a new model (a mapping)"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a trilm checkpoint, or a Llama/BERT/BART folder (converted through interop)"}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "a tokenizer folder or Hub name"})
    tokenizer: dict | str | None = field(
        default=None, metadata={"help": f"train a tokenizer: kind ({', '.join(TOKENIZER_KINDS)}), vocab_size, ..."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flex_attention, flash_attention_2"})
    license: str | None = field(
        default=None, metadata={"help": "the model card's license, a Hub license id (e.g. apache-2.0, mit): the owner's choice"}
    )

    def __post_init__(self):
        self.model = as_mapping(self.model, "model")
        self.tokenizer = as_mapping(self.tokenizer, "tokenizer")
        check_source(self.model_name_or_path, "model_name_or_path")
        check_source(self.tokenizer_name_or_path, "tokenizer_name_or_path")
        if self.model_name_or_path is None and self.family is None:
            raise ValueError(f"Give family ({', '.join(CONFIGS)}) for a new model, or model_name_or_path to start from one.")
        if self.family is not None and self.family not in CONFIGS:
            raise ValueError(f"family={self.family!r} does not exist: use one of {', '.join(CONFIGS)}.")
        if self.model_name_or_path is None:
            unknown = sorted(set(self.model) - set(CONFIGS[self.family].__dataclass_fields__))
            if unknown:
                raise ValueError(f"model: has unknown config fields {', '.join(unknown)} for {CONFIGS[self.family].__name__}.")
        elif self.model:
            raise ValueError("model: sets the config of a new model; with model_name_or_path the checkpoint's config is used.")
        kind = self.tokenizer.get("kind", "bpe")
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer: kind={kind!r} does not exist: use one of {', '.join(TOKENIZER_KINDS)}.")


def adapter_base(path: str) -> str | None:
    """The base model of a local PEFT adapter folder (`trilm finetune` with LoRA writes one), else None."""
    config = Path(path) / "adapter_config.json"
    return json.loads(config.read_text())["base_model_name_or_path"] if config.is_file() else None


def checkpoint_family(path: str) -> tuple[str, str]:
    """(model_type, family) of a checkpoint folder or Hub name (of its base, for an adapter folder), from its config."""
    path = adapter_base(path) or path
    local = Path(path) / "config.json"
    model_type = json.loads(local.read_text())["model_type"] if local.is_file() else source_config(path).model_type
    family = FAMILY_OF_MODEL_TYPE.get(model_type) or CONVERTIBLE.get(model_type)
    if family is None:
        raise ValueError(
            f"{path} holds a {model_type!r} model: trilm continues from trilm checkpoints or converts "
            f"{', '.join(CONVERTIBLE)} models."
        )
    return model_type, family


def resolve_family(args: ModelArguments) -> str:
    if args.model_name_or_path is None:
        return args.family
    _, family = checkpoint_family(args.model_name_or_path)
    if args.family is not None and args.family != family:
        raise ValueError(f"family={args.family} but {args.model_name_or_path} holds a {family} model.")
    return family


def check_family(what: str, families: tuple[str, ...], family: str) -> None:
    """A ValueError where `what` (a task, a recipe) has no head for a model of `family`."""
    if family not in families:
        raise ValueError(f"{what} takes a model of family {' or '.join(families)}; a {family} model has no head for it.")


def load_tokenizer(args: ModelArguments, family: str, texts=None):
    """The tokenizer named, the one saved with `model_name_or_path`, or one trained on `texts`."""
    source = args.tokenizer_name_or_path
    if source is None and args.model_name_or_path and not args.tokenizer:
        source = args.model_name_or_path
    if source is not None:
        gguf = gguf_file(source)
        return AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1]) if gguf else AutoTokenizer.from_pretrained(source)
    options = dict(args.tokenizer)
    kind = options.pop("kind", "bpe")
    if kind == "byte":
        return byte_level_tokenizer(family, **options)
    if texts is None:
        raise ValueError("No tokenizer given: set tokenizer_name_or_path, or tokenizer: {kind, vocab_size} to train one.")
    return from_main_process(lambda: train_tokenizer(texts=texts, kind=kind, family=family, **{"vocab_size": 8192, **options}))


def quantization_kwargs(args) -> dict:
    """QLoRA: `from_pretrained` keywords that load the linear layers in 4 or 8 bits (TRL's `ModelConfig` names:
    load_in_4bit, load_in_8bit, bnb_4bit_quant_type, use_bnb_nested_quant, dtype as the compute dtype), each
    process's copy on its own GPU; none unless asked for (ModelArguments without TRL's names ask for none)."""
    if not (getattr(args, "load_in_4bit", False) or getattr(args, "load_in_8bit", False)):
        return {}
    from accelerate import PartialState
    from trl import get_quantization_config

    return {"quantization_config": get_quantization_config(args), "device_map": {"": PartialState().local_process_index}}


def from_main_process(make):
    """`make()` run once, on the main process of a distributed run (`torchrun`, `accelerate launch`), and its
    result sent to the other processes; in a single process just `make()`. Tokenizer training needs it:
    the `tokenizers` WordPiece and Unigram trainers give another vocabulary, or other ids, in each process,
    and ranks that number tokens differently would train one model on mismatched ids."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return make()
    made = [make() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(made, src=0)  # between this run's own processes: nothing untrusted is unpickled
    return made[0]


def max_positions(args: ModelArguments, family: str) -> int:
    """The longest input the model takes, from its config (before the model is built)."""
    if args.model_name_or_path is None:
        config = CONFIGS[family](**args.model)
    else:
        config = source_config(adapter_base(args.model_name_or_path) or args.model_name_or_path)
    return config.max_position_embeddings


def distinct_pad(tokenizer) -> bool:
    """A PAD token distinct from EOS, where the tokenizer has none or pads with EOS (as most Llama-family chat
    checkpoints do): the reward head reads the last non-pad token, and batched generation would stop a padded
    row at once. An unused special token of the tokenizer (one its chat template and the BOS/EOS/UNK roles do
    not use) becomes PAD, else a new `<pad>`. Returns whether a token was added (the embeddings then grow)."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template or "")
    unused = [token for token in [*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()]
              if tokenizer.convert_tokens_to_ids(token) not in taken and token not in template]
    named = [token for token in unused if "pad" in token.lower()]
    if named or unused:
        tokenizer.pad_token = (named or unused)[0]
        return False
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return True


def load_model(args: ModelArguments, family: str, tokenizer, auto_class=None, **config_fields):
    """The model for `auto_class` (default: the family's pretraining head), checked against the tokenizer.
    `config_fields` set task values of the config (num_labels, id2label, ...). An adapter folder gives its
    base model with the adapter loaded (trainable), as `PeftModel.from_pretrained` does."""
    auto_class = auto_class or PRETRAINING_HEADS[family]
    extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    source = args.model_name_or_path and (adapter_base(args.model_name_or_path) or args.model_name_or_path)
    added_pad = False
    if family == "decoder" and source is not None:  # the checkpoint's config takes the tokenizer's own PAD
        added_pad = distinct_pad(tokenizer)
        config_fields = {"pad_token_id": tokenizer.pad_token_id, **config_fields}
    if source is None:
        config = CONFIGS[family](**{**config_values(tokenizer, CONFIGS[family]), **args.model, **config_fields})
        model = auto_class.from_config(config, **extra)
    else:
        model_type, _ = checkpoint_family(source)
        quantization = quantization_kwargs(args)
        if model_type in FAMILY_OF_MODEL_TYPE:
            model = auto_class.from_pretrained(source, **extra, **quantization, **config_fields)
            if added_pad:
                model.resize_token_embeddings(len(tokenizer))
        elif quantization:
            raise ValueError(
                f"load_in_4bit / load_in_8bit quantize a trilm checkpoint as it loads, and {source} is a {model_type} folder: "
                "convert it first (trilm.modeling.interop.from_transformers, then save_pretrained) and start from that folder."
            )
        else:  # transformers' class, converted; a GGUF file dequantized to float32 by transformers' loader
            gguf = gguf_file(source)
            native = (auto_class.from_pretrained(gguf[0], gguf_file=gguf[1], dtype=torch.float32, **config_fields) if gguf
                      else auto_class.from_pretrained(source, **config_fields))
            # transformers' GGUF reader builds a byte-level BPE tokenizer on GPT-2's class, which adds GPT-2's
            # <|endoftext|> to a vocabulary that lacks it: that token (like a new PAD) gets an embedding row.
            if added_pad or (gguf and len(tokenizer) > native.config.vocab_size):
                native.resize_token_embeddings(len(tokenizer))
            # a sentence-transformers BERT keeps its pooling (and normalisation) for the pooled heads
            model = from_transformers(native, **(sentence_transformers_fields(source) if family == "encoder" else {}))
    if family == "decoder" and source is not None and model.name_or_path != source:
        # A converted Llama keeps Llama's module names: its adapters name the folder (or file) as their base, so that
        # PEFT's AutoPeftModelForCausalLM loads them onto transformers' own Llama.
        model.name_or_path = model.config._name_or_path = source
    if source != args.model_name_or_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.model_name_or_path, is_trainable=True)
    if getattr(model, "generation_config", None) is not None and family == "decoder":
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        check_tokenizer_matches(tokenizer, model.config)
    except ValueError as error:
        model_source = args.model_name_or_path or f"the new {family} model"
        tokenizer_source = args.tokenizer_name_or_path or ("the tokenizer trained in this run" if args.tokenizer else model_source)
        raise ValueError(f"The tokenizer ({tokenizer_source}) does not fit the model ({model_source}): {error}") from None
    return model

