"""`trilm quickstart`: the main job, offline, in a few minutes on a laptop CPU.

For each family it trains a tokenizer and a tiny model on the built-in corpus (`trilm pretrain` with the
`pretrain-{family}-tiny.yaml` preset), saves it, reloads it through the Auto classes as a user would, and
prints a sample (a fill-mask, a generated continuation, a span-corruption output) and the eval loss against
the loss at step 0.

`--full` goes on from the decoder, each stage a recipe run on the built-in corpus with a preset of
`recipes/configs/` (`quickstart-*.yaml`, `rlhf-grpo.yaml`, `rlhf-ppo.yaml`): SFT on the demonstrations (`qa`),
a reward model on preference pairs, RLHF (GRPO, rewarded by the corpus's answer checker: the tiny reward
model ranks held-out pairs too poorly to steer RL), and as other last steps classic PPO (same reward)
and DPO. After each
stage it measures, on questions no stage trained on (people and operand pairs held out of every training
split), the greedy answers' accuracy by the corpus's checker and their mean score by the reward model, and
for the last stages the KL to the SFT model; it prints them and writes `report.json` and `stages.png`."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from . import pretrain
from .args import PRESETS, launch_defaults, parse_args
from .corpus import World, with_article

FAMILIES = ("encoder", "decoder", "seq2seq")


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="runs/quickstart", metadata={"help": "one folder per family is written below it"})
    families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "which families to train"})
    max_steps: int | None = field(default=None, metadata={"help": "override the presets' training steps"})
    seed: int = field(default=0, metadata={"help": "seed of the corpus and of training"})
    full: bool = field(default=False, metadata={"help": "go on from the decoder: SFT -> reward model -> RLHF, and DPO"})
    full_pretrain_steps: int = field(default=1500, metadata={"help": "--full: pretraining steps of the decoder the stages start from"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "--full: measure on at most this many held-out questions and pairs"})
    bf16: bool | None = field(default=None, metadata={"help": "true, false or auto (default: bf16 where the hardware has it natively, else float32)"})

    def __post_init__(self):
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"families: {', '.join(unknown)} do not exist; use {', '.join(FAMILIES)}.")
        if self.full and "decoder" not in self.families:
            raise ValueError("--full goes on from the decoder: keep decoder in families.")


def common_overrides(args: QuickstartArguments, folder: str) -> list[str]:
    # An explicit bf16 overrides every stage's preset; left to auto, each preset decides (the reward stage's
    # says float32) and the rest follow the hardware.
    bf16 = [] if (args.bf16_reason or "auto").startswith("auto") else ["--bf16", str(args.bf16).lower()]
    return ["--output_dir", str(Path(args.output_dir) / folder), "--seed", str(args.seed), "--corpus_seed", str(args.seed),
            "--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none", *bf16]


def pretrain_family(family: str, args: QuickstartArguments) -> dict:
    overrides = [*common_overrides(args, family), "--logging_steps", "50"]
    steps = args.max_steps if args.max_steps is not None else args.full_pretrain_steps if args.full and family == "decoder" else None
    if steps is not None:
        overrides += ["--max_steps", str(steps), "--eval_steps", str(max(1, steps // 3))]
    parsed = parse_args(pretrain.ARGUMENT_TYPES, ["--config", str(PRESETS / f"pretrain-{family}-tiny.yaml"), *overrides], "trilm quickstart", launch_defaults())
    trainer, metrics = pretrain.run(*parsed)
    start_loss = next(row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row)
    return {"folder": trainer.args.output_dir, "start_loss": start_loss, "eval_loss": metrics["eval_loss"]}


def sample(family: str, folder: str, seed: int) -> str:
    """Reload the saved folder through the Auto classes and show what the model does with a held-out fact."""
    person = World(seed).people[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if family == "encoder":
        model = AutoModelForMaskedLM.from_pretrained(folder).eval()
        text = f"{person.name} has {with_article(person.color)} {tokenizer.mask_token}."
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
        guesses = tokenizer.convert_ids_to_tokens(logits.topk(3).indices)
        return f"{text!r} -> {', '.join(guesses)} (true: {person.pet})"
    if family == "decoder":
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        prompt = f"{person.name} lives in"
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return f"{prompt!r} -> {tokenizer.decode(output[0, inputs['input_ids'].shape[1]:])!r} (true: {person.city})"
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    text = f"{person.name} lives in {person.city}. {person.name} has a <extra_id_0> {person.pet}."
    inputs = tokenizer(text, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return f"{text!r} -> {tokenizer.decode(output[0], skip_special_tokens=False)!r} (true: {person.color})"


def run(args: QuickstartArguments) -> dict:
    start = time.perf_counter()
    results = {}
    for family in args.families:
        began = time.perf_counter()
        results[family] = pretrain_family(family, args)
        results[family]["sample"] = sample(family, results[family]["folder"], args.seed)
        results[family]["seconds"] = time.perf_counter() - began
    print("\ntrilm quickstart: a tokenizer and a tiny model of each family, trained on the built-in corpus\n")
    for family, result in results.items():
        print(
            f"{family:8} eval loss {result['start_loss']:.2f} at step 0 -> {result['eval_loss']:.2f}  "
            f"({result['seconds']:.0f} s)  saved in {result['folder']}"
        )
        print(f"         {result['sample']}")
    if args.full:
        results["stages"] = alignment_stages(results["decoder"]["folder"], args)
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Load a model as you would any other:")
    print("  import trilm.modeling; from transformers import AutoModelForCausalLM")
    print(f"  model = AutoModelForCausalLM.from_pretrained({str(Path(args.output_dir) / 'decoder')!r})")
    print("Next: trilm pretrain --config pretrain-decoder-tiny.yaml --train_file YOUR.txt --output_dir runs/mine")
    print("      (every flag of TrainingArguments is a key; loss.png and metrics.json are in each folder)")
    return results


# ------------------------------------------------------------------------------------------------ --full
STAGES = (  # name, recipe module, preset, starts from
    ("sft", "finetune", "quickstart-sft.yaml", "base"),
    ("reward", "reward", "quickstart-reward.yaml", "sft"),
    ("rlhf", "rlhf", "rlhf-grpo.yaml", "sft"),
    ("ppo", "rlhf", "rlhf-ppo.yaml", "sft"),
    ("dpo", "dpo", "quickstart-dpo.yaml", "sft"),
)
ONLINE_RL = ("rlhf", "ppo")
LAST_STAGES = ("rlhf", "ppo", "dpo")


def alignment_stages(base: str, args: QuickstartArguments) -> list[dict]:
    """SFT -> reward model -> RLHF (GRPO), and PPO and DPO, from the pretrained decoder in `base`; each policy
    measured on the held-out questions. Writes report.json and stages.png in output_dir."""
    import importlib

    folders, seconds, per_update = {"base": base}, {}, {}
    for name, module, preset, source in STAGES:
        began = time.perf_counter()
        overrides = [*common_overrides(args, name), "--model_name_or_path", folders[source]]
        if name in ONLINE_RL:
            # The tiny reward model ranks held-out pairs too poorly (README, Alignment figures) to steer RL:
            # the corpus's checker is the reward.
            overrides += ["--reward_funcs", "answer_reward"]
        if args.max_steps is not None:
            overrides += ["--max_steps", str(args.max_steps)]
        if args.max_eval_samples is not None:
            overrides += ["--max_eval_samples", str(args.max_eval_samples)]
        recipe = importlib.import_module(f"trilm.recipes.{module}")
        trainer, metrics = recipe.run(*recipe.parse(["--config", str(PRESETS / preset), *overrides]))
        folders[name], seconds[name] = trainer.args.output_dir, time.perf_counter() - began
        if name in ONLINE_RL:  # an update: GRPO's optimizer step, PPO's rollout batch with its epochs
            per_update[name] = metrics["train_runtime"] / max(trainer.state.global_step, 1)
    report = measure_stages(folders, seconds, per_update, args)
    write_report(report, Path(args.output_dir))
    return report


def measure_stages(folders: dict, seconds: dict, per_update: dict, args: QuickstartArguments) -> list[dict]:
    from transformers import AutoModelForSequenceClassification

    from .alignment import load_merged, score_conversations
    from .data import DataArguments
    from .models import ModelArguments
    from .sft import answer_accuracy, held_out_questions

    questions = held_out_questions(DataArguments(corpus_seed=args.seed, max_eval_samples=args.max_eval_samples))
    tokenizer = AutoTokenizer.from_pretrained(folders["sft"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(folders["reward"]).eval()
    policies = {name: load_merged(ModelArguments(model_name_or_path=folders[name]), "decoder", tokenizer, AutoModelForCausalLM).eval()
                for name in ("base", "sft", *LAST_STAGES)}
    report = []
    for name, model in policies.items():
        accuracy, rows = answer_accuracy(model, tokenizer, questions, max_new_tokens=16)
        chats = [[{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["prediction"]}] for row in rows]
        entry = {"stage": name, "folder": folders[name], "answer_accuracy": accuracy,
                 "mean_reward": score_conversations(reward_model, tokenizer, chats).mean().item(), "seconds": seconds.get(name)}
        if name in per_update:
            entry["seconds_per_update"] = per_update[name]
        if name in LAST_STAGES:
            entry["kl_to_sft"] = sampled_kl(model, policies["sft"], tokenizer, [q["question"] for q in questions], args.seed)
        report.append(entry)
    return report


@torch.no_grad()
def sampled_kl(policy, reference, tokenizer, questions: list[str], seed: int, max_new_tokens: int = 16) -> float:
    """KL(policy || reference) per reply, estimated on replies sampled from the policy (temperature 1): per
    token Schulman's unbiased, non-negative k3 = exp(-d) - 1 + d of the log-ratio d (as TRL logs `kl`),
    summed up to and including the end of turn and averaged over replies."""
    from .sft import chat_prompts, chat_stops, reply_mask

    torch.manual_seed(seed)
    batch = chat_prompts(tokenizer, questions)
    stops = chat_stops(tokenizer)
    output = policy.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    completion = output[:, width:]
    mask = reply_mask(completion, torch.tensor(stops))
    attention = torch.cat([batch["attention_mask"], torch.ones_like(completion)], dim=1)
    log_ratio = 0
    for model, sign in ((policy, 1), (reference, -1)):
        logits = model(input_ids=output, attention_mask=attention).logits[:, width - 1 : -1].float()
        log_ratio = log_ratio + sign * logits.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    k3 = torch.expm1(-log_ratio) + log_ratio
    return ((k3 * mask).sum(1)).mean().item()


def write_report(report: list[dict], output_dir: Path) -> None:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    names = [entry["stage"] for entry in report]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(names, [100 * entry["answer_accuracy"] for entry in report], color="tab:blue")
    left.set_ylabel("held-out answer accuracy (%)")
    right.bar(names, [entry["mean_reward"] for entry in report], color="tab:orange")
    right.set_ylabel("mean reward-model score")
    for axes in (left, right):
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("trilm quickstart --full: each stage on questions no stage trained on")
    figure.tight_layout()
    figure.savefig(output_dir / "stages.png", dpi=100)
    plt.close(figure)
    print("\nstage    held-out accuracy  mean reward  KL to SFT  seconds  s/update")
    for entry in report:
        kl = f"{entry['kl_to_sft']:9.3f}" if "kl_to_sft" in entry else " " * 9
        took = f"{entry['seconds']:7.0f}" if entry["seconds"] is not None else " " * 7
        update = f"{entry['seconds_per_update']:9.2f}" if "seconds_per_update" in entry else ""
        print(f"{entry['stage']:8} {100 * entry['answer_accuracy']:16.1f}%  {entry['mean_reward']:11.3f}  {kl}  {took}  {update}")
    print(f"(report.json and stages.png in {output_dir})")


def main(argv: list[str]) -> int:
    (args,) = parse_args((QuickstartArguments,), argv, "trilm quickstart")
    run(args)
    return 0
