"""`trilm generate`: use any trilm checkpoint (or LoRA adapter folder) as its family is used.

    trilm generate --model_name_or_path runs/quickstart/decoder --prompt "Kalo Mira lives in"
    trilm generate --model_name_or_path runs/quickstart/sft --chat true          # a chat loop on stdin
    trilm generate --model_name_or_path runs/translate --prompt_file sources.txt --num_beams 4
    trilm generate --model_name_or_path runs/quickstart/encoder --prompt "Kalo Mira has a [MASK]."

A decoder continues the prompt (or, with `use_chat_template: true` or in the chat loop, answers it through
the tokenizer's chat template, stopping at the end of its turn); a seq2seq model translates or summarises
the prompt (`source_prefix` as in `trilm finetune`); an encoder fills each mask token with its most likely
candidates. Sampling takes `GenerationConfig`'s names; replies stream to the terminal as they are decoded
(`TextStreamer`); `--compile true` decodes with a static cache and `torch.compile`. With `output_file`,
every prompt and reply is also written as a JSON line.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, TextStreamer

from .common.args import parse_args
from .common.chat import assistant_turn, chat_stops, render_prompt, user_turn
from .common.lora import load_merged
from .common.models import PRETRAINING_HEADS, ModelArguments, check_source, checkpoint_family
from .common.output import write_jsonl

EXIT_WORDS = ("/exit", "/quit")


@dataclass
class GenerateArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a trilm checkpoint or adapter folder, or a Hub name"})
    prompt: str | None = field(default=None, metadata={"help": "one prompt"})
    prompt_file: str | None = field(default=None, metadata={"help": "a text file of prompts, one per line"})
    chat: bool = field(default=False, metadata={"help": "decoder: a chat loop reading your turns from stdin (/exit ends it)"})
    use_chat_template: bool = field(default=False, metadata={"help": "decoder: render each prompt as a user turn of the chat template"})
    system_prompt: str | None = field(default=None, metadata={"help": "chat: a system turn first"})
    source_prefix: str = field(default="", metadata={"help": "seq2seq: text put before every prompt (T5-style task prefix)"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per reply"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy / beam search"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=50, metadata={"help": "sampling: keep the k most likely tokens"})
    top_p: float = field(default=1.0, metadata={"help": "sampling: nucleus mass"})
    num_beams: int = field(default=1, metadata={"help": "beam search width"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalty on repeated tokens"})
    num_candidates: int = field(default=5, metadata={"help": "encoder: candidates shown per mask"})
    stream: bool = field(default=True, metadata={"help": "print replies token by token as they are decoded"})
    compile: bool = field(default=False, metadata={"help": "static cache + torch.compile for faster decoding"})
    seed: int = field(default=0, metadata={"help": "seed of sampling"})
    output_file: str | None = field(default=None, metadata={"help": "also write prompts and replies as JSON lines"})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("Give model_name_or_path: a trilm checkpoint or adapter folder (a recipe's output_dir).")
        check_source(self.model_name_or_path, "model_name_or_path")
        sources = [name for name in ("prompt", "prompt_file", "chat") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError("Give exactly one of --prompt, --prompt_file, or --chat true.")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            raise ValueError(f"prompt_file={self.prompt_file} not found: no such file.")


def load(args: GenerateArguments):
    """(family, model in eval mode, tokenizer) of a checkpoint or adapter folder (merged into its base)."""
    _, family = checkpoint_family(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = load_merged(ModelArguments(model_name_or_path=args.model_name_or_path), family, tokenizer, PRETRAINING_HEADS[family])
    return family, model.eval(), tokenizer


def generation_config(args: GenerateArguments, model, tokenizer, stops: list[int] | None) -> tuple[GenerationConfig, dict]:
    config = GenerationConfig.from_dict({**model.generation_config.to_dict(), **dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, num_beams=args.num_beams, repetition_penalty=args.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
    )})
    if stops:
        config.eos_token_id = stops
    extra = {}
    if args.compile:
        from transformers.generation import CompileConfig

        compile_config = CompileConfig(fullgraph=True, mode="default")
        compile_config._compile_all_devices = True  # CPU too: measured faster decoding there (docs/results.md, Performance)
        extra = {"cache_implementation": "static", "compile_config": compile_config}
    return config, extra


@torch.no_grad()
def reply(model, tokenizer, text: str, args: GenerateArguments, config: GenerationConfig, extra: dict, special: bool) -> str:
    """Generate from `text` (already rendered), streaming to stdout; returns the decoded new text."""
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=special).to(model.device)
    inputs.pop("token_type_ids", None)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream and args.num_beams == 1 else None
    output = model.generate(**inputs, generation_config=config, streamer=streamer, **extra)
    new = output[0] if model.config.is_encoder_decoder else output[0, inputs["input_ids"].shape[1] :]
    decoded = tokenizer.decode(new, skip_special_tokens=True).strip()
    if streamer is None:
        print(decoded, flush=True)
    return decoded


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, count: int) -> list[list[tuple[str, float]]]:
    """The `count` most likely tokens, with their probabilities, for each mask token of `text`."""
    if tokenizer.mask_token is None or tokenizer.mask_token not in text:
        raise ValueError(f"An encoder fills masks: put {tokenizer.mask_token or 'a mask token'} in the prompt, e.g. 'Kalo Mira has a {tokenizer.mask_token}.'")
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    logits = model(**inputs).logits[0]
    positions = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    candidates = []
    for position in positions:
        probabilities = logits[position].float().softmax(-1)
        top = probabilities.topk(count)
        candidates.append([(tokenizer.decode([i]).strip(), p.item()) for p, i in zip(top.values, top.indices)])
    print("  ".join(", ".join(f"{token} ({p:.2f})" for token, p in slot) for slot in candidates), flush=True)
    return candidates


def chat_loop(model, tokenizer, args: GenerateArguments, config: GenerationConfig, extra: dict) -> list[dict]:
    """Read user turns from stdin until end of input or /exit, answering each with the whole conversation."""
    messages = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []  # a system turn only here
    rows = []
    print(f"chatting with {args.model_name_or_path}; end with {EXIT_WORDS[0]} or end of input", flush=True)
    for line in sys.stdin:
        turn = line.strip()
        if turn in EXIT_WORDS:
            break
        if not turn:
            continue
        messages += user_turn(turn)
        print("assistant: ", end="", flush=True)
        answer = reply(model, tokenizer, render_prompt(tokenizer, messages), args, config, extra, special=False)
        messages += assistant_turn(answer)
        rows.append({"prompt": turn, "output": answer})
    return rows


def run(args: GenerateArguments) -> list[dict]:
    torch.manual_seed(args.seed)
    family, model, tokenizer = load(args)
    if args.chat and family != "decoder":
        raise ValueError(f"--chat true talks to a decoder; {args.model_name_or_path} holds a {family} model.")
    if (args.chat or args.use_chat_template) and tokenizer.chat_template is None:
        raise ValueError(f"The tokenizer of {args.model_name_or_path} has no chat template: give plain prompts (use_chat_template false).")
    templated = family == "decoder" and (args.chat or args.use_chat_template)
    config, extra = generation_config(args, model, tokenizer, chat_stops(tokenizer) if templated else None) if family != "encoder" else (None, {})
    if args.chat:
        rows = chat_loop(model, tokenizer, args, config, extra)
    else:
        prompts = [args.prompt] if args.prompt else [line.rstrip("\n") for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
        rows = []
        for prompt in prompts:
            print(f"{prompt} ->", end=" " if family != "encoder" else "\n  ", flush=True)
            if family == "encoder":
                rows.append({"prompt": prompt, "candidates": fill_mask(model, tokenizer, prompt, args.num_candidates)})
                continue
            if templated:
                text, special = render_prompt(tokenizer, prompt), False
            else:
                text, special = args.source_prefix + prompt, family == "seq2seq"  # seq2seq inputs end with EOS
            rows.append({"prompt": prompt, "output": reply(model, tokenizer, text, args, config, extra, special)})
    if args.output_file:
        write_jsonl(args.output_file, rows)
    return rows


def main(argv: list[str]) -> int:
    (args,) = parse_args((GenerateArguments,), argv, "trilm generate")
    run(args)
    return 0
