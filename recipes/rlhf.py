"""`trilm rlhf`: online reinforcement learning from rewards, on TRL's `GRPOTrainer` (`algorithm: grpo`, the
default) or `RLOOTrainer` (`algorithm: rloo`), or classic actor-critic PPO (`algorithm: ppo`, trilm's
`PPOTrainer` in `common/ppo.py`, with a value model).

    trilm rlhf --model_name_or_path runs/sft --reward_model_name_or_path runs/reward [--key value ...]
    trilm rlhf --config rlhf-grpo.yaml --model_name_or_path runs/sft --reward_funcs my_rewards:brevity
    trilm rlhf --config rlhf-ppo.yaml --model_name_or_path runs/sft --reward_model_name_or_path runs/reward

GRPO and RLOO are PPO-style: the loss is PPO's clipped surrogate, here with the clipping acting (the policy is
updated `num_iterations: 2` times per generation batch) and a KL penalty to the starting (SFT) model
(`beta > 0`); the logs carry `clip_ratio/*` and `kl`. PPO's value model starts from
`value_model_name_or_path`, else the (first) reward model, else a copy of the policy's backbone with a new
head. Rewards, weighted by `reward_weights` in this order: each reward model folder of
`reward_model_name_or_path` (a `trilm reward` run, with the policy's tokenizer), then each of `reward_funcs`
(`module:function` called as TRL calls reward functions; or `answer_reward`, the built-in corpus's answer
checker and its default, or `number_reward`, 1 where a reply's last number is the row's `answer`). Prompts:
`prompt`, `question` or `messages` rows (`common/preferences.py`), by default the built-in corpus's `prompts`
(questions about people and operand pairs that no SFT demonstration answered). Metrics, before and after:
the mean reward of greedy replies to the data's held-out prompts (`eval_reward`, its test or validation
split), or on the built-in corpus the greedy answer accuracy on its held-out questions.
"""

import copy
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from .common.answers import answer_metrics, held_out_questions
from .common.args import launch_defaults, parse_args, peek_option
from .common.chat import turn_texts
from .common.data import DataArguments, load_raw_datasets
from .common.lora import LoraModelArguments, check_adapter_options, load_merged, lora_config
from .common.models import ModelArguments, check_family, check_source, load_tokenizer, resolve_family
from .common.output import TuningArguments, final_metrics, finish, record_arguments, show_progress
from .common.ppo import PPOConfig, PPOTrainer, check_rollout_batch
from .common.preferences import check_reference, held_out_prompts, prompt_dataset
from .common.rewards import check_reward_tokenizer, held_out_reward, import_reward
from .common.runtime import start_run

ALGORITHMS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer), "ppo": (PPOConfig, PPOTrainer)}
# GRPO and RLOO PPO-style by default: clipping acts (two updates per generation batch) and a KL penalty to
# the reference. PPO's own defaults already are.
PPO_STYLE = {"num_iterations": 2, "beta": 0.04}
DEFAULTS = {"grpo": PPO_STYLE, "rloo": PPO_STYLE, "ppo": {}}
# What each algorithm logs as the mean reward, the KL to the reference and the clipped share of tokens.
LOGGED = {
    "grpo": ("reward", "kl", "clip_ratio/region_mean"),
    "rloo": ("reward", "kl", "clip_ratio/region_mean"),
    "ppo": ("objective/scores", "objective/kl", "policy/clipfrac_avg"),
}


@dataclass
class RLHFArguments(TuningArguments):
    algorithm: str = field(default="grpo", metadata={"help": f"{', '.join(ALGORITHMS)}"})
    reward_model_name_or_path: list[str] | None = field(default=None, metadata={"help": "reward model folders (trilm reward runs)"})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": "reward functions: module:function, or answer_reward"})
    value_model_name_or_path: str | None = field(
        default=None, metadata={"help": "ppo: the value model's start (default: the reward model, else the policy)"}
    )

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r} does not exist: use one of {', '.join(ALGORITHMS)}.")
        if self.value_model_name_or_path and self.algorithm != "ppo":
            raise ValueError(f"value_model_name_or_path is read by algorithm ppo only (this run is {self.algorithm}).")
        for path in self.reward_model_name_or_path or []:
            check_source(path, "reward_model_name_or_path")
        check_source(self.value_model_name_or_path, "value_model_name_or_path")


def reward_sources(args: RLHFArguments, data_args: DataArguments, tokenizer) -> list:
    """The reward models (loaded, checked against the policy's tokenizer) and functions, in `reward_weights` order."""
    functions = args.reward_funcs
    builtin = data_args.train_file is None and data_args.dataset_name is None
    if not args.reward_model_name_or_path and not functions:
        if not builtin:
            raise ValueError("No reward given: set reward_model_name_or_path (a trilm reward run) and/or reward_funcs (module:function).")
        functions = ["answer_reward"]
    rewards = [import_reward(name) for name in functions or []]
    models = [score_model(path, tokenizer) for path in args.reward_model_name_or_path or []]
    return models + rewards


def score_model(path: str, tokenizer, role: str = "reward model"):
    """A one-label sequence-classification model from `path` (a reward model, or PPO's value model), its
    tokenizer checked against the policy's."""
    check_reward_tokenizer(path, tokenizer, role)
    return load_merged(ModelArguments(model_name_or_path=path), "decoder", tokenizer, AutoModelForSequenceClassification, num_labels=1)


def value_model(args: RLHFArguments, policy, tokenizer):
    """PPO's value model: from value_model_name_or_path, else the first reward model, else the policy's
    backbone (a copy, merged where the policy came as an adapter) under a new `score` head."""
    path = args.value_model_name_or_path or (args.reward_model_name_or_path or [None])[0]
    if path is not None:
        return score_model(path, tokenizer, "value model")
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    value = AutoModelForSequenceClassification.from_config(config).to(policy.dtype)
    value.base_model.load_state_dict(policy.base_model.state_dict())
    return value


def check_ppo_policy(algorithm: str, model_args) -> None:
    """Classic PPO copies the policy's weights into its value model, which 4- or 8-bit weights cannot give:
    a ValueError before training (GRPO and RLOO take a quantized policy)."""
    if algorithm == "ppo" and model_args.quantized:
        raise ValueError("algorithm ppo builds its value model from the policy's full-precision weights: drop load_in_4bit / "
                         "load_in_8bit (LoRA on the full model), or use algorithm grpo or rloo, which take a quantized policy.")


def check_checkpoint_steps(training_args) -> None:
    """Each generation batch serves num_iterations x steps_per_generation updates and is not saved: a
    checkpoint between them could not resume to the same weights. (A PPO step is a whole batch.)"""
    if isinstance(training_args, PPOConfig):
        return
    period = training_args.num_iterations * training_args.steps_per_generation
    if training_args.save_strategy == "steps" and period > 1 and training_args.save_steps % period:
        raise ValueError(
            f"save_steps={training_args.save_steps} must be a multiple of num_iterations x steps_per_generation = {period}, "
            "so that checkpoints fall between generation batches and resume to the same weights."
        )


def training_summary(log_history: list[dict], algorithm: str = "grpo") -> dict:
    """From the logged steps: mean reward over the first and last tenth of generation batches, the KL to the
    reference at the end and at most, the mean clipped share of tokens, and the share of steps that clipped
    any (only steps re-using a generation batch can: the first update of a batch has ratio 1)."""
    reward_key, kl_key, clip_key = LOGGED[algorithm]
    rewarded = [row[reward_key] for row in log_history if reward_key in row]
    updates = [row for row in log_history if clip_key in row]
    if not rewarded or not updates:
        return {}
    tenth, kl = max(1, len(rewarded) // 10), [row[kl_key] for row in log_history if kl_key in row] or [0.0]
    clipped = [row[clip_key] for row in updates]
    return {
        "train_reward_start": sum(rewarded[:tenth]) / tenth,
        "train_reward_end": sum(rewarded[-tenth:]) / tenth,
        "train_kl_end": sum(kl[-tenth:]) / len(kl[-tenth:]),
        "train_kl_max": max(kl),
        "train_clip_ratio_mean": sum(clipped) / len(clipped),
        "train_steps_clipped": sum(value > 0 for value in clipped) / len(clipped),
    }


def run(model_args: LoraModelArguments, data_args: DataArguments, args: RLHFArguments, training_args: GRPOConfig | RLOOConfig):
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    check_family("trilm rlhf", ("decoder",), family)
    check_adapter_options(args.merge, model_args, training_args)
    if args.algorithm != "ppo":  # PPO's reference is the starting policy itself (adapter disabled, or a frozen copy)
        check_reference(model_args, training_args.beta)
    check_ppo_policy(args.algorithm, model_args)
    check_checkpoint_steps(training_args)
    raw = load_raw_datasets(data_args, "prompts")
    prompts = prompt_dataset(raw)
    # Held-out measures: the rewards of greedy replies to the data's held-out prompts, else (the built-in corpus)
    # the answer accuracy of its held-out questions.
    held_out = held_out_prompts(prompts, data_args)
    questions = [] if held_out else held_out_questions(data_args, raw)
    tokenizer = load_tokenizer(model_args, family, texts=turn_texts(prompts["train"], ("prompt",)))
    rewards = reward_sources(args, data_args, tokenizer)
    model = load_merged(model_args, family, tokenizer, AutoModelForCausalLM)
    if args.algorithm == "ppo":
        check_rollout_batch(prompts["train"], training_args)
        critic = value_model(args, model, tokenizer)
    metrics = {}
    weights = training_args.reward_weights
    if training_args.do_train:
        metrics, _ = answer_metrics(model, tokenizer, questions, args.max_new_tokens, "_before_training")
        metrics |= held_out_reward(model, tokenizer, held_out, rewards, weights, args.max_new_tokens, "_before_training")[0]
    peft_config = lora_config(model, model_args, "CAUSAL_LM") if model_args.use_peft else None
    arguments = (model_args, data_args, args, training_args)
    record_arguments(arguments)
    _, trainer_class = ALGORITHMS[args.algorithm]
    if args.algorithm == "ppo":
        trainer = PPOTrainer(model=model, value_model=critic, reward_funcs=rewards, args=training_args,
                             train_dataset=prompts["train"], processing_class=tokenizer, peft_config=peft_config)
    else:
        trainer = trainer_class(
            model=model,
            reward_funcs=rewards,
            args=training_args,
            train_dataset=prompts["train"],
            processing_class=tokenizer,
            reward_processing_classes=[tokenizer if hasattr(r, "config") else None for r in rewards],
            peft_config=peft_config,
        )
    show_progress(trainer, f"rlhf {args.algorithm}")
    if training_args.do_train:
        metrics |= final_metrics(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint), {}, None)
        metrics |= training_summary(trainer.state.log_history, args.algorithm)
    after, rows = answer_metrics(trainer.model, tokenizer, questions, args.max_new_tokens)
    rewarded, replies = held_out_reward(trainer.model, tokenizer, held_out, rewards, weights, args.max_new_tokens)
    metrics |= after | rewarded
    rows += replies
    finish(trainer, tokenizer, "rlhf", arguments, metrics, rows, start)
    return trainer, metrics


def parse(argv: list[str]) -> tuple:
    algorithm = peek_option(argv, "algorithm") or "grpo"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} does not exist: give --algorithm (or algorithm: in the YAML) as one of {', '.join(ALGORITHMS)}.")
    config_class, _ = ALGORITHMS[algorithm]
    defaults = {**launch_defaults(), **DEFAULTS[algorithm], "do_train": True, "output_dir": f"runs/rlhf-{algorithm}"}
    return parse_args((LoraModelArguments, DataArguments, RLHFArguments, config_class), argv, "trilm rlhf", defaults)


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
