"""`trilm bench`: time a trilm model, and with `--compare` transformers' reference of identical weights.

    trilm bench --config recipes/configs/decoder-nanogpt.yaml --compare true --mode both

The preset gives `family` and `model` (config values); flags set the mode, dtype, batch and sequence
length. Training steps (forward, backward, AdamW step) and generation (greedy, KV cache, batch 1 and 8)
are timed with the two models interleaved in one process: after warm-up, each round times both, in
alternating order, and the table shows medians and the median of the per-round ratios (ours / reference).
MFU is measured against this device's own matmul peak at the same dtype, found by the bench itself.
"""

import json
import statistics
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trilm.modeling.interop import to_transformers

from .common.args import parse_args
from .common.models import CONFIGS, FAMILIES, PRETRAINING_HEADS
from .common.runtime import cpu_capability, native_cpu_bf16, tune_cpu_allocator



@dataclass
class BenchArguments:
    family: str = field(default="decoder", metadata={"help": "decoder, encoder or seq2seq"})
    model: dict | str | None = field(default=None, metadata={"help": "config values (a mapping in the YAML; JSON on the command line)"})
    mode: str = field(default="both", metadata={"help": "train, generate or both (generation: decoder and seq2seq)"})
    dtype: str = field(default="float32", metadata={"help": "float32, or bfloat16 (autocast for training, weights for generation)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the training step; static cache + compile for generation"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)"})
    tune_allocator: bool = field(
        default=True, metadata={"help": "on CPU, keep freed memory in the heap (trilm.recipes.runtime.tune_cpu_allocator), for both models"}
    )
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    seq_len: int = field(default=128, metadata={"help": "training sequence length (source and target for seq2seq)"})
    compare: bool = field(default=False, metadata={"help": "also time transformers' reference (Llama, BERT, BART) of identical weights"})
    attn_implementation: str | None = field(default=None, metadata={"help": "attention kernel for both models (default: transformers' choice)"})
    warmup: int = field(default=2, metadata={"help": "untimed steps before measuring"})
    rounds: int = field(default=5, metadata={"help": "interleaved timing rounds"})
    min_round_seconds: float = field(default=0.5, metadata={"help": "steps per round are chosen so a round lasts at least this long"})
    new_tokens: int = field(default=200, metadata={"help": "tokens generated per sequence"})
    prompt_len: int = field(default=16, metadata={"help": "prompt length for generation"})
    generate_batch_sizes: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "batch sizes for generation"})
    output: str | None = field(default=None, metadata={"help": "JSON output path (default: runs/bench-<family>.json)"})
    seed: int = field(default=0)

    def __post_init__(self):
        if isinstance(self.model, str):
            self.model = json.loads(self.model)
        self.model = dict(self.model or {})
        for name, allowed in (("family", FAMILIES), ("mode", ("train", "generate", "both")), ("dtype", ("float32", "bfloat16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: allowed values are {', '.join(allowed)}.")
        for name in ("batch_size", "seq_len", "rounds", "new_tokens", "prompt_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: it must be positive.")


# ------------------------------------------------------------------------------------------ models
def build(args: BenchArguments) -> dict[str, torch.nn.Module]:
    """The trilm model (the family's pretraining head) and, with --compare, the reference converted from it
    (identical weights)."""
    torch.manual_seed(args.seed)
    config = CONFIGS[args.family](**args.model)
    if args.attn_implementation:
        config._attn_implementation = args.attn_implementation
    models = {"trilm": PRETRAINING_HEADS[args.family].from_config(config)}
    if args.compare:
        models["reference"] = to_transformers(models["trilm"])
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {name: model.to(device) for name, model in models.items()}


def training_batch(family: str, config, batch_size: int, seq_len: int, device, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    low = 5 if config.vocab_size > 10 else 0
    ids = torch.randint(low, config.vocab_size, (batch_size, seq_len), generator=generator)
    if family == "encoder":
        masked = torch.rand(batch_size, seq_len, generator=generator) < 0.15
        batch = {"input_ids": ids, "labels": torch.where(masked, ids, -100)}
    elif family == "seq2seq":
        batch = {"input_ids": ids, "labels": torch.randint(low, config.vocab_size, (batch_size, seq_len), generator=generator)}
    else:
        batch = {"input_ids": ids, "labels": ids}
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runners: dict, warmup: int, rounds: int, min_round_seconds: float, device) -> dict:
    """Per-call seconds of each runner: medians over rounds, the order alternating from round to round,
    and the median of the per-round ratios trilm / reference."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    synchronize(device)
    start = time.perf_counter()
    next(iter(runners.values()))()
    synchronize(device)
    calls = max(1, round(min_round_seconds / max(time.perf_counter() - start, 1e-6)))
    per_call = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                runners[name]()
            synchronize(device)
            per_call[name].append((time.perf_counter() - start) / calls)
    result = {name: {"median_s": statistics.median(times), "rounds_s": times} for name, times in per_call.items()}
    if len(names) == 2:
        ratios = [a / b for a, b in zip(per_call[names[0]], per_call[names[1]])]
        result["ratio"] = {"median": statistics.median(ratios), "rounds": ratios}
    return result


def training_autocast(args: BenchArguments, device):
    """bfloat16 training runs under autocast with float32 weights; float32 needs no context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()


def train_step_fn(model, batch, args: BenchArguments, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = training_autocast(args, device)
    forward = torch.compile(model) if args.compile else model

    def step():
        with autocast:
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_flops(model, batch, args: BenchArguments, device) -> int:
    """Model FLOPs of one forward + backward, counted by torch's FlopCounterMode (matmuls and attention)."""
    autocast = training_autocast(args, device)
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, device) -> float:
    """This device's best matmul throughput (FLOP/s) at `dtype`, over a few square sizes."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        synchronize(device)
        reps = 3
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        synchronize(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on CPU the process RSS above its level on entry,
    sampled every millisecond."""

    def __init__(self, device):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.process, self.base, self.stop = psutil.Process(), psutil.Process().memory_info().rss, False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop = True
            self.thread.join()


# ---------------------------------------------------------------------------------------- benches
def bench_train(models: dict, args: BenchArguments, device) -> dict:
    config = models["trilm"].config
    batch = training_batch(args.family, config, args.batch_size, args.seq_len, device, args.seed)
    for model in models.values():
        model.train()
    flops = {name: step_flops(model, batch, args, device) for name, model in models.items()}
    peak = matmul_peak(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32, device)
    steps = {name: train_step_fn(model, batch, args, device) for name, model in models.items()}
    memory = {}
    # RSS growth shows a step's peak only while freed memory goes back to the OS: glibc's stock thresholds here.
    allocator_tuned = device.type == "cpu" and args.tune_allocator and tune_cpu_allocator(keep_freed_memory=False)
    for name, step in steps.items():
        step()  # optimizer state exists before the measured step
        with PeakMemory(device) as tracker:
            step()
        memory[name] = tracker.peak_bytes
    if allocator_tuned:
        tune_cpu_allocator()
    timing = interleaved(steps, args.warmup, args.rounds, args.min_round_seconds, device)
    tokens = args.batch_size * args.seq_len * (2 if args.family == "seq2seq" else 1)
    result = {"flops_per_step": flops["trilm"], "matmul_peak_flops": peak, "tokens_per_step": tokens}
    for name in models:
        seconds = timing[name]["median_s"]
        result[name] = {
            "ms_per_step": seconds * 1e3,
            "tokens_per_s": tokens / seconds,
            "flops_per_step": flops[name],  # each model's own: they may differ (sparse prediction)
            "mfu": flops[name] / seconds / peak,
            "peak_memory_mb": memory[name] / 2**20,
            "rounds_ms": [t * 1e3 for t in timing[name]["rounds_s"]],
        }
    if "ratio" in timing:
        result["ratio"] = timing["ratio"]
    return result


def bench_generate(models: dict, args: BenchArguments, device) -> dict:
    from transformers.generation import CompileConfig

    config = models["trilm"].config
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    for model in models.values():
        model.eval().to(dtype)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, use_cache=True)
    if args.compile:
        compile_config = CompileConfig(fullgraph=True, mode="default")
        compile_config._compile_all_devices = True
        kwargs.update(cache_implementation="static", compile_config=compile_config)
    results = {}
    for batch_size in args.generate_batch_sizes:
        generator = torch.Generator().manual_seed(args.seed)
        prompt = torch.randint(5 if config.vocab_size > 10 else 0, config.vocab_size, (batch_size, args.prompt_len), generator=generator).to(device)
        runners = {
            name: (lambda m=model, p=prompt: m.generate(p, attention_mask=torch.ones_like(p), pad_token_id=config.pad_token_id or 0, **kwargs))
            for name, model in models.items()
        }
        with torch.no_grad():
            outputs = {name: run() for name, run in runners.items()}
            timing = interleaved(runners, args.warmup, args.rounds, args.min_round_seconds, device)
        entry = {}
        for name in models:
            entry[name] = {"new_tokens_per_s": batch_size * args.new_tokens / timing[name]["median_s"], "seconds": timing[name]["median_s"]}
        if "ratio" in timing:
            entry["speedup"] = 1 / timing["ratio"]["median"]
            entry["same_tokens"] = bool(torch.equal(*outputs.values()))
        results[f"batch_{batch_size}"] = entry
    return results


def run(args: BenchArguments) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build(args)
    device = next(models["trilm"].parameters()).device
    # Freed memory stays in the heap for every timed step (bench_train lifts this for its memory step only).
    allocator_tuned = device.type == "cpu" and args.tune_allocator and tune_cpu_allocator()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "cpu_capability": cpu_capability(),
        "native_cpu_bf16": native_cpu_bf16(),
        "cpu_allocator_tuned": allocator_tuned,
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in models["trilm"].parameters()),
        "arguments": asdict(args),
    }
    if args.mode in ("train", "both"):
        report["train"] = bench_train(models, args, device)
    if args.mode in ("generate", "both") and args.family != "encoder":
        if "train" in report and "reference" in models:
            # Each model trained with its own optimizer and drifted by float noise: compare generation
            # on identical weights again.
            models["reference"] = to_transformers(models["trilm"])
        report["generate"] = bench_generate(models, args, device)
    print_table(report)
    output = Path(args.output or f"runs/bench-{args.family}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


def print_table(report: dict) -> None:
    args = report["arguments"]
    allocator = " | allocator tuned" if report.get("cpu_allocator_tuned") else ""
    bf16 = "native bf16" if report["native_cpu_bf16"] else "no native bf16"
    print(
        f"trilm bench | {args['family']} | {report['parameters'] / 1e6:.2f}M params | {args['dtype']} | {report['device']} "
        f"| cpu capability {report['cpu_capability']}, {bf16} | compile={args['compile']}{allocator}"
    )
    if "train" in report:
        train = report["train"]
        print(f"train step, batch {args['batch_size']} x {args['seq_len']} tokens; matmul peak {train['matmul_peak_flops'] / 1e9:.1f} GFLOP/s")
        print(f"  {'model':10} {'ms/step':>10} {'tokens/s':>12} {'MFU':>7} {'peak MB':>9}")
        for name in ("trilm", "reference"):
            if name in train:
                row = train[name]
                print(f"  {name:10} {row['ms_per_step']:>10.2f} {row['tokens_per_s']:>12,.0f} {row['mfu']:>7.1%} {row['peak_memory_mb']:>9.1f}")
        if "ratio" in train:
            print(f"  ratio trilm/reference (median of rounds): {train['ratio']['median']:.3f}")
    for key, entry in report.get("generate", {}).items():
        line = f"generate {key.replace('_', ' ')}, {args['new_tokens']} new tokens: " + ", ".join(
            f"{name} {entry[name]['new_tokens_per_s']:,.1f} tok/s" for name in ("trilm", "reference") if name in entry
        )
        if "speedup" in entry:
            line += f" | speedup {entry['speedup']:.2f}x, same tokens: {entry['same_tokens']}"
        print(line)


def main(argv: list[str]) -> int:
    (args,) = parse_args((BenchArguments,), argv, prog="trilm bench")
    run(args)
    return 0
