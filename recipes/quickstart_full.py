"""`trilm quickstart --full`: from the quickstart's pretrained decoder through every stage of a chat model, each
stage a recipe run on the built-in corpus with a preset of `recipes/configs/` (`quickstart-*.yaml`,
`rlhf-grpo.yaml`, `rlhf-ppo.yaml`): SFT on the demonstrations (`qa`), a reward model on preference pairs, RLHF
(GRPO, rewarded by the corpus's answer checker: the tiny reward model ranks held-out pairs too poorly to steer
RL), and as other last steps classic PPO (same reward) and DPO. After each stage it measures, on questions no
stage trained on (people and operand pairs held out of every training split), the greedy answers' accuracy by
the corpus's checker and their mean score by the reward model, and for the last stages the KL to the SFT model;
it prints them and writes `report.json` and `stages.png`."""

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from . import dpo, finetune, reward, rlhf
from .common.answers import answer_accuracy, held_out_questions
from .common.args import PRESETS
from .common.chat import assistant_turn, chat_prompts, chat_stops, reply_mask, user_turn
from .common.data import DataArguments
from .common.lora import load_merged
from .common.models import ModelArguments
from .common.rewards import score_conversations

STAGES = (  # name, recipe, preset, starts from
    ("sft", finetune, "quickstart-sft.yaml", "base"),
    ("reward", reward, "quickstart-reward.yaml", "sft"),
    ("rlhf", rlhf, "rlhf-grpo.yaml", "sft"),
    ("ppo", rlhf, "rlhf-ppo.yaml", "sft"),
    ("dpo", dpo, "quickstart-dpo.yaml", "sft"),
)
ONLINE_RL = ("rlhf", "ppo")
LAST_STAGES = ("rlhf", "ppo", "dpo")


def run(base: str, args, overrides) -> list[dict]:
    """SFT -> reward model -> RLHF (GRPO), and PPO and DPO, from the pretrained decoder in `base`; each policy
    measured on the held-out questions. `args` are quickstart's (output_dir, seed, max_steps, max_eval_samples),
    `overrides(stage)` the flags every stage takes. Writes report.json and stages.png in output_dir."""
    folders, seconds, per_update = {"base": base}, {}, {}
    for name, recipe, preset, source in STAGES:
        began = time.perf_counter()
        flags = [*overrides(name), "--model_name_or_path", folders[source]]
        if name in ONLINE_RL:
            # The tiny reward model ranks held-out pairs too poorly (docs/results.md, Alignment figures) to steer RL:
            # the corpus's checker is the reward.
            flags += ["--reward_funcs", "answer_reward"]
        if args.max_steps is not None:
            flags += ["--max_steps", str(args.max_steps)]
        if args.max_eval_samples is not None:
            flags += ["--max_eval_samples", str(args.max_eval_samples)]
        trainer, metrics = recipe.run(*recipe.parse(["--config", str(PRESETS / preset), *flags]))
        folders[name], seconds[name] = trainer.args.output_dir, time.perf_counter() - began
        if name in ONLINE_RL:  # an update: GRPO's optimizer step, PPO's rollout batch with its epochs
            per_update[name] = metrics["train_runtime"] / max(trainer.state.global_step, 1)
    report = measure_stages(folders, seconds, per_update, args)
    write_report(report, Path(args.output_dir))
    return report


def measure_stages(folders: dict, seconds: dict, per_update: dict, args) -> list[dict]:
    questions = held_out_questions(DataArguments(corpus_seed=args.seed, max_eval_samples=args.max_eval_samples))
    tokenizer = AutoTokenizer.from_pretrained(folders["sft"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(folders["reward"]).eval()
    policies = {name: load_merged(ModelArguments(model_name_or_path=folders[name]), "decoder", tokenizer, AutoModelForCausalLM).eval()
                for name in ("base", "sft", *LAST_STAGES)}
    report = []
    for name, model in policies.items():
        accuracy, rows = answer_accuracy(model, tokenizer, questions, max_new_tokens=16)
        chats = [user_turn(row["question"]) + assistant_turn(row["prediction"]) for row in rows]
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
