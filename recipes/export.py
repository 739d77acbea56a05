"""`trilm export`: a trilm checkpoint as transformers' own class of the same function, or as a GGUF file.

    trilm export --model_name_or_path runs/quickstart/decoder --to transformers --output_dir runs/export/decoder
    trilm export --model_name_or_path runs/quickstart/decoder --to gguf --output_dir runs/export/gguf [--dtype q8_0]

`--to transformers` writes the checkpoint as `LlamaForCausalLM` / `LlamaForSequenceClassification`, `BertFor...`
or `BartFor...` (interop's `to_transformers`: the same function, to float tolerance) with its tokenizer and
generation config, so that `transformers serve`, vLLM, SGLang and TGI load it with no custom code.
`--to gguf` (decoders) writes one GGUF file the way llama.cpp's converter writes a Llama model: weights in
float32, float16, bf16 or q8_0, with the tokenizer (byte-level BPE) and the chat template inside, for
llama.cpp, Ollama and transformers' GGUF loader.

Parse -> check the output folder -> load (an adapter folder merged into its base) -> convert -> write.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

import trilm.modeling
from trilm.modeling.interop import to_transformers

from .common.args import parse_args
from .common.chat import chat_stops
from .common.lora import load_merged
from .common.models import FAMILY_OF_MODEL_TYPE, PRETRAINING_HEADS, ModelArguments, adapter_base, check_source, checkpoint_family

TARGETS = ("transformers", "gguf")
GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")


@dataclass
class ExportArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "a trilm checkpoint or LoRA adapter folder (a recipe's output_dir)"})
    to: str = field(default="transformers", metadata={"help": "transformers (the native Llama/BERT/BART class) or gguf (decoders)"})
    output_dir: str = field(default=None, metadata={"help": "the folder to write (must not exist, or be empty, unless --overwrite)"})
    dtype: str = field(default="float32", metadata={"help": f"gguf: the weights' type, one of {', '.join(GGUF_DTYPES)}"})
    overwrite: bool = field(default=False, metadata={"help": "write into an output_dir that is not empty"})

    def __post_init__(self):
        if not self.model_name_or_path or not self.output_dir:
            raise ValueError("Give --model_name_or_path (a trilm run folder) and --output_dir (where the export goes).")
        check_source(self.model_name_or_path, "model_name_or_path")
        if self.to not in TARGETS:
            raise ValueError(f"to={self.to!r} is invalid: use {' or '.join(TARGETS)}.")
        if self.dtype not in GGUF_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is invalid: use one of {', '.join(GGUF_DTYPES)}.")
        if self.to == "transformers" and self.dtype != "float32":
            raise ValueError("--dtype chooses the GGUF file's weight type; --to transformers keeps the checkpoint's dtype.")
        if not Path(self.model_name_or_path).is_dir():
            raise ValueError(f"model_name_or_path={self.model_name_or_path} not found: no such folder.")
        output = Path(self.output_dir)
        if output.exists() and (not output.is_dir() or any(output.iterdir())) and not self.overwrite:
            raise ValueError(f"output_dir={self.output_dir} exists and is not empty: choose another folder, or pass --overwrite true.")


def load_checkpoint(path: str):
    """(model in eval mode, tokenizer) of a trilm run folder; a LoRA adapter of a language model merged into its base."""
    model_type, family = checkpoint_family(path)
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ValueError(f"{path} holds a transformers {model_type!r} model already: transformers, vLLM and llama.cpp's converter read it as it is.")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if adapter_base(path):
        task = json.loads((Path(path) / "adapter_config.json").read_text()).get("task_type")
        if task not in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
            raise ValueError(f"{path} is a LoRA adapter for {task}: export the merged copy that `--merge true` writes ({path}/merged).")
        model = load_merged(ModelArguments(model_name_or_path=path), family, tokenizer, PRETRAINING_HEADS[family])
    else:
        config = json.loads((Path(path) / "config.json").read_text())
        model_class = getattr(trilm.modeling, (config.get("architectures") or [""])[0], None)
        if model_class is None:
            raise ValueError(f"{path}/config.json names no trilm model class in architectures: {config.get('architectures')}.")
        model = model_class.from_pretrained(path)
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------------ --to transformers
def export_transformers(model, tokenizer, output_dir: Path) -> type:
    """The native transformers class of the same function, saved with the tokenizer and generation config."""
    native = to_transformers(model)  # a config the native class cannot express raises here, before any file is written
    if native.can_generate() and not native.config.is_encoder_decoder and tokenizer.chat_template:
        # A server stops a reply where `trilm generate --chat` does: at the template's end of turn, and at EOS.
        native.generation_config.eos_token_id = chat_stops(tokenizer)
    native.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return type(native)


# ------------------------------------------------------------------------------------------- --to gguf
def gguf_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows from transformers' rotate-half RoPE layout to GGML's interleaved one (llama.cpp's `permute`;
    transformers' GGUF loader undoes it)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


GGUF_NAMES = {  # Llama parameter name (after `model.layers.N.`) -> GGUF tensor name (after `blk.N.`)
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def gguf_tensors(llama) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM's weights under llama.cpp's tensor names, q/k permuted."""
    config = llama.config
    tensors = {}
    for name, value in llama.state_dict().items():
        value = value.detach().float()
        if name == "model.embed_tokens.weight":
            tensors["token_embd.weight"] = value
        elif name == "model.norm.weight":
            tensors["output_norm.weight"] = value
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                tensors["output.weight"] = value
        elif name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            if rest == "self_attn.q_proj.weight":
                value = gguf_permute(value, config.num_attention_heads)
            elif rest == "self_attn.k_proj.weight":
                value = gguf_permute(value, config.num_key_value_heads)
            tensors[f"blk.{index}.{GGUF_NAMES[rest]}"] = value
    return tensors


def gguf_vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, their GGUF token types, merges) of a byte-level BPE tokenizer; ids the model has
    beyond the tokenizer are padded as unused `[PADn]` tokens, as llama.cpp's converter does."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE" or (state.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError("--to gguf writes byte-level BPE tokenizers (trilm's decoder default, kind bpe or byte); this one is "
                         f"{model.get('type')} with pre-tokenizer {(state.get('pre_tokenizer') or {}).get('type')}.")
    by_id = {index: token for token, index in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    if len(by_id) > vocab_size:
        raise ValueError(f"The tokenizer has {len(by_id)} tokens and the model {vocab_size} embeddings: they do not belong together.")
    special = {token["id"] for token in state["added_tokens"] if token["special"]}
    tokens, types = [], []
    for index in range(vocab_size):
        if index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    return tokens, [int(t) for t in types], merges


def quantized(value: torch.Tensor, dtype: str):
    """(data, GGML type) of one tensor: norms (1-D) stay float32, as in llama.cpp; q8_0 needs rows of 32s."""
    import gguf

    data = value.numpy().astype(np.float32)
    if data.ndim == 1 or dtype == "float32":
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "float16" or (dtype == "q8_0" and data.shape[-1] % 32):
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    kind = gguf.GGMLQuantizationType.BF16 if dtype == "bfloat16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, kind), kind


FILE_TYPES = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def export_gguf(model, tokenizer, output_dir: Path, dtype: str, name: str) -> Path:
    """One GGUF file (architecture `llama`) with the weights, the tokenizer and the chat template."""
    try:
        import gguf
    except ImportError as error:
        raise ValueError("--to gguf needs the gguf package: pip install 'trilm[gguf]' (or pip install gguf).") from error
    if not model.can_generate() or model.config.is_encoder_decoder:
        raise ValueError(f"--to gguf writes decoders (llama.cpp runs causal LMs); {type(model).__name__} is not one: use --to transformers.")
    llama = to_transformers(model)  # a decoder that is no Llama (plain MLP, LayerNorm, ...) raises here, naming the field
    if type(llama).__name__ != "LlamaForCausalLM":
        raise ValueError(f"--to gguf writes Llama; this model is a {type(llama).__name__} (q/k/v biases or q/k norms): use --to transformers.")
    config = llama.config
    if config.attention_bias or config.mlp_bias:
        raise ValueError(f"--to gguf writes Llama without biases; this model has attention_bias={config.attention_bias}, mlp_bias={config.mlp_bias}.")
    tokens, types, merges = gguf_vocabulary(tokenizer, config.vocab_size)
    tensors = {name: quantized(value, dtype) for name, value in gguf_tensors(llama).items()}  # before any file is written
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}-{dtype}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's split regex, the ByteLevel pre-tokenizer's own
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id),
                          ("unk", tokenizer.unk_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for tensor_name, (data, kind) in tensors.items():
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------------------------ card
def export_card(source: str, target: str, what: str, files: list[str]) -> str:
    serve = {
        "transformers": [
            "transformers, vLLM, SGLang and TGI load this folder as it is (no trilm, no custom code):",
            "",
            "```bash",
            "transformers serve . --force-model .   # an OpenAI-style API on localhost:8000 (/v1/chat/completions)",
            "vllm serve .",
            "```",
        ],
        "gguf": [
            "llama.cpp, Ollama and transformers' GGUF loader read the file:",
            "",
            "```bash",
            f"llama-cli -m {files[0]}",
            f"python -c \"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('.', gguf_file='{files[0]}')\"",
            "```",
        ],
    }[target]
    return "\n".join([
        "---", "library_name: transformers" if target == "transformers" else "library_name: gguf", "tags: [trilm, export]", "---", "",
        f"# {what}, exported by `trilm export --to {target}`", "",
        f"The same function as the trilm checkpoint `{source}` (trilm's equivalence with transformers' own classes: same "
        "logits to float tolerance), written for the ecosystem's servers. Files: " + ", ".join(f"`{f}`" for f in files) + ".", "",
        *serve, "",
        "The trilm folder itself loads with `import trilm.modeling` or `trust_remote_code=True`; servers that resolve "
        "`config.architectures` on the transformers module (`transformers serve`, vLLM) need this export instead.", "",
    ])


def run(args: ExportArguments) -> Path:
    model, tokenizer = load_checkpoint(args.model_name_or_path)
    output = Path(args.output_dir)
    if args.to == "transformers":
        native = export_transformers(model, tokenizer, output)
        what, files = native.__name__, sorted(p.name for p in output.iterdir())
    else:
        path = export_gguf(model, tokenizer, output, args.dtype, Path(args.model_name_or_path).resolve().name)
        what, files = f"LlamaForCausalLM as GGUF ({args.dtype})", [path.name]
    (output / "README.md").write_text(export_card(args.model_name_or_path, args.to, what, files))
    print(f"trilm export: {args.model_name_or_path} -> {output} ({what})")
    return output


def main(argv: list[str]) -> int:
    (args,) = parse_args((ExportArguments,), argv, "trilm export")
    run(args)
    return 0
