"""Classic actor-critic PPO for RLHF (Ziegler et al. 2019, InstructGPT), as `trilm rlhf --algorithm ppo`.

    trilm rlhf --algorithm ppo --model_name_or_path runs/sft --reward_model_name_or_path runs/reward
    trilm rlhf --config rlhf-ppo.yaml --model_name_or_path runs/sft

One update (`global_step`) is one batch of prompts:
1. **Rollouts.** The policy samples a reply to each prompt (`max_completion_length`, `temperature`), cut
   after its first stop token (EOS or end of turn); the stop token stays part of the reply.
2. **Rewards.** Each reply's score is the weighted sum of the rewards of `trilm rlhf` (reward models and
   functions, `reward_weights`), less `missing_eos_penalty` where no stop token came. Per token, the reward
   is `-kl_coef` x the KL estimate to the frozen reference (`kl_estimator`: k1, the log-ratio, or k3), with
   the score added at the reply's last token.
3. **Advantages.** The value model (a `...ForSequenceClassification` with one label, read at every token)
   gives one value per reply token; GAE (`gamma`, `lam`) gives advantages, whitened over the batch's reply
   tokens, and returns = advantages + values.
4. **Optimisation.** `num_ppo_epochs` passes over the batch in `num_mini_batches` shuffled mini-batches, one
   optimizer step each (of `gradient_accumulation_steps` micro-batches): PPO's clipped policy loss
   (`cliprange`) plus `vf_coef` x the clipped value loss (`cliprange_value`).

`per_device_train_batch_size` prompts make one process's rollout batch. The policy and the value model train
together (one optimizer); under LoRA the reference is the policy with its adapter disabled, in full
training a frozen copy of the starting policy. Built on TRL's helpers (`pad`, `selective_log_softmax`,
`entropy_from_logits`, `unwrap_model_for_generation`, `disable_dropout_in_model`) and on Trainer's machinery:
accelerate (`torchrun`), the optimizer and schedule, callbacks and logging, and checkpoints holding the
policy (or its adapter), `value_model/`, optimizer, scheduler, RNG and trainer state, from which
`resume_from_checkpoint` continues to the same weights. The final folder keeps `value_model/` too.

Logged per update: `objective/scores`, `objective/kl`, `objective/entropy`, `objective/non_score_reward`,
`objective/rlhf_reward`, `policy/approxkl_avg`, `policy/clipfrac_avg`, `policy/entropy_avg`,
`loss/policy_avg`, `loss/value_avg`, `val/clipfrac_avg`, `val/ratio`, `val/explained_variance`,
`val/num_eos_tokens`, `val/reply_length` (the names of TRL's former PPOTrainer where it had one).
"""

import contextlib
import copy
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import GenerationConfig, Trainer, TrainingArguments
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import TrainOutput, get_last_checkpoint, speed_metrics
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, pad, selective_log_softmax

from .chat import chat_stops, reply_mask
from .rewards import score_replies

VALUE_MODEL_FOLDER = "value_model"
CHECKPOINTING = {"use_reentrant": False}  # activation checkpointing that needs no input gradients (LoRA)


@dataclass
class PPOConfig(TrainingArguments):
    """TrainingArguments plus PPO's own settings (the names of TRL's former PPOConfig where it had them)."""

    max_completion_length: int = field(default=32, metadata={"help": "most tokens sampled per reply"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the rollouts"})
    missing_eos_penalty: float | None = field(default=None, metadata={"help": "subtracted from the score of a reply with no stop token"})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "one weight per reward (models first, then functions)"})
    kl_coef: float = field(default=0.05, metadata={"help": "weight of the per-token KL penalty to the reference"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log-ratio) or k3 (exp(-d) - 1 + d, never negative)"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten the per-token rewards before GAE"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    num_mini_batches: int = field(default=1, metadata={"help": "optimizer steps per pass (the rollout batch split)"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip range"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip range around the rollout's values"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    local_rollout_forward_batch_size: int = field(default=64, metadata={"help": "rows per no-grad forward pass in rollouts"})

    def __post_init__(self):
        super().__post_init__()
        batch, minis, accumulation = self.per_device_train_batch_size, self.num_mini_batches, self.gradient_accumulation_steps
        if minis < 1 or batch % minis:
            raise ValueError(
                f"num_mini_batches={minis} does not divide the rollout batch (per_device_train_batch_size={batch}): "
                "pick a divisor of it, or another batch size."
            )
        if (batch // minis) % accumulation:
            raise ValueError(
                f"gradient_accumulation_steps={accumulation} does not divide the mini-batch of {batch // minis} rollouts "
                f"(per_device_train_batch_size={batch} / num_mini_batches={minis})."
            )
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r} does not exist: use k1 or k3.")
        if self.num_ppo_epochs < 1 or self.temperature <= 0:
            raise ValueError("num_ppo_epochs must be at least 1 and temperature positive.")


# ------------------------------------------------------------------------------------------ the maths
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance of the entries where `mask` is 1."""
    centered = values - masked_mean(values, mask)
    count = mask.sum()
    return masked_mean(centered**2, mask) * count / (count - 1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`values` scaled to unit variance over the masked entries, and centred unless `shift_mean` is False."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_shaped_rewards(logprobs, ref_logprobs, scores, mask, kl_coef: float, estimator: str = "k1"):
    """Per-token rewards -kl_coef x KL estimate, plus each reply's score at its last token; and the KL."""
    log_ratio = (logprobs - ref_logprobs) * mask
    kl = log_ratio if estimator == "k1" else (torch.expm1(-log_ratio) + log_ratio)
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return rewards, kl


def generalized_advantages(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each reply (the value after its last token is 0): advantages and returns (= advantages + values)."""
    values, rewards = values * mask, rewards * mask
    running, reversed_advantages = torch.zeros_like(rewards[:, 0]), []
    for t in reversed(range(rewards.shape[1])):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, averaged over reply tokens; with its clip fraction, approximate KL and ratio."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def clipped_value_loss(predicted, old_values, returns, mask, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the larger of the squared errors of the prediction and of the prediction clipped around the
    rollout's values, averaged over reply tokens; and the clip fraction."""
    clipped = old_values + torch.clamp(predicted - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (predicted - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask)


def explained_variance(values, returns, mask) -> torch.Tensor:
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask)


# ------------------------------------------------------------------------------------------ the models
class PolicyAndValue(nn.Module):
    """The policy and the value model as one module, so that one optimizer, one DDP wrapper and one gradient
    clip cover both."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    # What TRL's unwrap_model_for_generation reads: checkpointing is off while generating.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_gradient_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        for module in (self.policy, self.value_model):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        for module in (self.policy, self.value_model):
            module.gradient_checkpointing_disable()

    def forward(self, input_ids, attention_mask, position_ids, context_length: int):
        """Policy logits and values at the positions that predict the reply tokens."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
        logits = self.policy(**inputs).logits[:, context_length - 1 : -1]
        hidden = self.value_model.base_model(**inputs).last_hidden_state[:, context_length - 1 : -1]
        return logits, self.value_model.score(hidden).squeeze(-1)


class PPOTrainer(Trainer):
    """Actor-critic PPO on Trainer (see the module's docstring). `model`: the policy (a causal LM);
    `value_model`: a sequence-classification model with one label (its backbone and `score` head are read
    at every token); `ref_model`: the frozen reference (None: the adapter-disabled policy under LoRA, else a
    frozen copy of the starting policy); `reward_funcs`: reward models and functions, as `GRPOTrainer`
    takes them; `train_dataset`: prompts (`prompt`, a conversation or a string; other columns go to the
    reward functions)."""

    def __init__(self, model, value_model, reward_funcs: list, args: PPOConfig, train_dataset, processing_class,
                 ref_model=None, peft_config=None, callbacks=None):
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if ref_model is None and not hasattr(model, "peft_config"):
            ref_model = copy.deepcopy(model)
        for module in (model, value_model, ref_model):
            if module is not None:
                disable_dropout_in_model(module)
        if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
            raise ValueError(f"reward_weights has {len(args.reward_weights)} weights for {len(reward_funcs)} rewards.")
        self.policy, self.value_model, self.reward_funcs = model, value_model, reward_funcs
        self.reward_weights = torch.tensor(args.reward_weights or [1.0] * len(reward_funcs))
        tokenizer = processing_class
        train_dataset = train_dataset.map(lambda row: {"input_ids": prompt_ids(tokenizer, row["prompt"])})
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                         data_collator=lambda rows: rows, callbacks=callbacks)
        self.value_model.to(self.args.device)
        for reward in self.reward_funcs:
            if isinstance(reward, nn.Module):
                reward.to(self.args.device).eval()
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(ref_model.requires_grad_(False).eval(), evaluation_mode=True)
        self.stop_ids = torch.tensor(chat_stops(tokenizer), device=self.args.device)
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0,
            eos_token_id=self.stop_ids.tolist(), pad_token_id=tokenizer.pad_token_id,
        )
        check_rollout_batch(self.train_dataset, args)
        self.global_batch = args.per_device_train_batch_size * self.accelerator.num_processes

    # ----------------------------------------------------------------------------------- the loop
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        args = self.args
        started = time.time()
        updates_per_epoch = len(self.train_dataset) // self.global_batch
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
        both = PolicyAndValue(self.policy, self.value_model)
        if args.gradient_checkpointing:
            both.gradient_checkpointing_enable(CHECKPOINTING)
        with self.trainer_model(both):
            self.create_optimizer_and_scheduler(num_training_steps=total * args.num_ppo_epochs * args.num_mini_batches)
        model, self.optimizer = self.accelerator.prepare(both, self.optimizer)
        self.model_wrapped = model
        self.state = TrainerState(stateful_callbacks=[c for c in [*self.callback_handler.callbacks, self.control] if isinstance(c, ExportableState)])
        self.state.init_training_references(self, total, math.ceil(total / updates_per_epoch), trial)
        self.state.compute_steps(args, total)
        self.current_flos = 0
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint: no checkpoint-* folder in {args.output_dir}.")
        if resume_from_checkpoint:
            self.resume(resume_from_checkpoint)
        first = self.state.global_step
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        losses = []
        with self.trainer_model(both):
            for update in range(first, total):
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                stats = self.ppo_update(model, self.rollout_rows(update, updates_per_epoch))
                losses.append(stats["loss"])
                self.state.global_step, self.state.epoch = update + 1, (update + 1) / updates_per_epoch
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                if self.control.should_log:
                    self.log({**stats, "learning_rate": self.learning_rate()})
                    self.control.should_log = False
                if self.control.should_save:
                    self.save_checkpoint(model)
                    self.control = self.callback_handler.on_save(args, self.state, self.control)
                if self.control.should_training_stop:
                    break
        self.model_wrapped = self.model
        done = self.state.global_step - first
        metrics = speed_metrics("train", started, num_samples=done * self.global_batch, num_steps=done)
        metrics["train_loss"] = sum(losses) / max(len(losses), 1)
        metrics["train_seconds_per_update"] = metrics["train_runtime"] / max(done, 1)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def rollout_rows(self, update: int, updates_per_epoch: int) -> list[dict]:
        """This process's prompts of update `update`: each epoch a new seeded permutation of the dataset,
        so that a resumed run takes the same batches."""
        epoch, index = divmod(update, updates_per_epoch)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        order = torch.randperm(len(self.train_dataset), generator=torch.Generator().manual_seed(seed + epoch))
        start = index * self.global_batch + self.accelerator.process_index * self.args.per_device_train_batch_size
        return list(self.train_dataset.select(order[start : start + self.args.per_device_train_batch_size].tolist()))

    # ------------------------------------------------------------------------------------ one update
    def ppo_update(self, model, rows: list[dict]) -> dict:
        with torch.no_grad():
            batch = self.rollout(model, rows)
        return {**batch.pop("stats"), **self.optimize(model, batch)}

    def forward_chunks(self, function, sequences, attention, positions) -> tuple[torch.Tensor, ...]:
        """`function`'s tensors over the rows, `local_rollout_forward_batch_size` rows at a time."""
        size = self.args.local_rollout_forward_batch_size
        chunks = [function(sequences[i : i + size], attention[i : i + size], positions[i : i + size]) for i in range(0, len(sequences), size)]
        return tuple(torch.cat(parts) for parts in zip(*chunks))

    def rollout(self, model, rows: list[dict]) -> dict:
        args, tokenizer, device = self.args, self.processing_class, self.args.device
        queries = pad([torch.tensor(row["input_ids"]) for row in rows], padding_value=tokenizer.pad_token_id, padding_side="left").to(device)
        query_mask = pad([torch.ones(len(row["input_ids"]), dtype=torch.long) for row in rows], padding_side="left").to(device)
        context = queries.shape[1]
        model.eval()  # generation with the KV cache (the models create none while training)
        with unwrap_model_for_generation(model, self.accelerator, gradient_checkpointing_kwargs=CHECKPOINTING) as unwrapped, self.accelerator.autocast():
            sequences = unwrapped.policy.generate(input_ids=queries, attention_mask=query_mask, generation_config=self.generation_config)
        replies = sequences[:, context:]
        mask = reply_mask(replies, self.stop_ids)  # the stop token stays part of the reply
        replies = replies.masked_fill(mask == 0, tokenizer.pad_token_id)
        sequences = torch.cat([queries, replies], dim=1)
        attention = torch.cat([query_mask, mask], dim=1)
        positions = (attention.cumsum(1) - 1).clamp(min=0)

        def policy_and_values(ids, attn, pos):
            with self.accelerator.autocast():
                logits, values = model(input_ids=ids, attention_mask=attn, position_ids=pos, context_length=context)
            return selective_log_softmax(logits.float(), ids[:, context:], temperature=args.temperature), values.float()

        def reference(ids, attn, pos):
            inputs = {"input_ids": ids, "attention_mask": attn, "position_ids": pos, "use_cache": False}
            with self.accelerator.autocast(), (self.policy.disable_adapter() if self.ref_model is None else contextlib.nullcontext()):
                logits = (self.ref_model or self.policy)(**inputs).logits[:, context - 1 : -1]
            return (selective_log_softmax(logits.float(), ids[:, context:], temperature=args.temperature),)

        maskf = mask.float()
        logprobs, values = self.forward_chunks(policy_and_values, sequences, attention, positions)
        values = values * maskf
        (ref_logprobs,) = self.forward_chunks(reference, sequences, attention, positions)
        contains_stop = torch.isin(replies, self.stop_ids).any(1)  # the reply's own stop (later tokens are padding)
        scores = self.scores(rows, replies, mask)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~contains_stop).float()
        rewards, kl = kl_shaped_rewards(logprobs, ref_logprobs, scores, maskf, args.kl_coef, args.kl_estimator)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, maskf, shift_mean=False) * maskf
        advantages, returns = generalized_advantages(rewards, values, maskf, args.gamma, args.lam)
        advantages = masked_whiten(advantages, maskf) * maskf
        non_score = (-args.kl_coef * kl).sum(1)
        stats = {
            "objective/scores": scores.mean(),
            "objective/kl": kl.sum(1).mean(),
            "objective/entropy": (-logprobs * maskf).sum(1).mean(),
            "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (scores + non_score).mean(),
            "val/explained_variance": explained_variance(values, returns, maskf),
            "val/num_eos_tokens": contains_stop.float().mean(),
            "val/reply_length": maskf.sum(1).mean(),
        }
        return {"sequences": sequences, "attention": attention, "positions": positions, "context": context, "mask": maskf,
                "logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns,
                "stats": {name: self.accelerator.gather(value.detach().reshape(1)).mean().item() for name, value in stats.items()}}

    def scores(self, rows: list[dict], replies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the rewards of each reply (`rewards.score_replies`)."""
        texts = self.processing_class.batch_decode(replies, skip_special_tokens=True)
        ids = [reply[: int(m.sum())].tolist() for reply, m in zip(replies, mask)]
        weighted = score_replies(self.reward_funcs, self.reward_weights, self.processing_class, rows, texts, ids, trainer_state=self.state)
        return weighted.to(self.args.device)

    def optimize(self, model, batch: dict) -> dict:
        """`num_ppo_epochs` passes of shuffled mini-batches over the rollout batch, one optimizer step each."""
        args = self.args
        rows = len(batch["sequences"])
        mini = rows // args.num_mini_batches
        micro = mini // args.gradient_accumulation_steps
        stats = defaultdict(list)
        model.train()
        for _ in range(args.num_ppo_epochs):
            for mini_batch in torch.randperm(rows, device=args.device).split(mini):
                micro_batches = mini_batch.split(micro)
                for i, index in enumerate(micro_batches):
                    last = i == len(micro_batches) - 1
                    with self.accelerator.no_sync(model) if not last else contextlib.nullcontext():
                        loss, step_stats = self.micro_batch_loss(model, batch, index)
                        self.accelerator.backward(loss / len(micro_batches))
                    for name, value in step_stats.items():
                        stats[name].append(value.detach())
                if args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
        means = {name: torch.stack(values).mean().reshape(1) for name, values in stats.items()}
        return {name: self.accelerator.gather(value).mean().item() for name, value in means.items()}

    def micro_batch_loss(self, model, batch: dict, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        args, context = self.args, batch["context"]
        ids = batch["sequences"][index]
        with self.accelerator.autocast():
            logits, predicted = model(input_ids=ids, attention_mask=batch["attention"][index],
                                      position_ids=batch["positions"][index], context_length=context)
        logits, predicted, mask = logits.float(), predicted.float(), batch["mask"][index]
        logprobs = selective_log_softmax(logits, ids[:, context:], temperature=args.temperature)
        policy_loss, policy_stats = clipped_policy_loss(logprobs, batch["logprobs"][index], batch["advantages"][index], mask, args.cliprange)
        value_loss, value_clipfrac = clipped_value_loss(predicted, batch["values"][index], batch["returns"][index], mask, args.cliprange_value)
        loss = policy_loss + args.vf_coef * value_loss
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(logits / args.temperature), mask)
        return loss, {
            "loss": loss, "loss/policy_avg": policy_loss, "loss/value_avg": value_loss, "val/clipfrac_avg": value_clipfrac,
            "policy/clipfrac_avg": policy_stats["clipfrac"], "policy/approxkl_avg": policy_stats["approxkl"],
            "policy/entropy_avg": entropy, "val/ratio": policy_stats["ratio"],
        }

    # ------------------------------------------------------------------------------- Trainer internals
    # PPO's loop (rollouts, then epochs of mini-batches over them) is its own: Trainer.train cannot run it. What
    # it reuses of Trainer (accelerate, optimizer and schedule, callbacks, logging, checkpoints) goes through
    # Trainer's private methods, here and nowhere else: the code most exposed to transformers releases
    # (checked on 5.23 and 5.25; the resume test in tests/test_ppo.py fails where one changes). Each, and why:
    # - `_save_checkpoint(model, trial)`: checkpoint-N/ as Trainer writes it (model or adapter, optimizer,
    #   scheduler, RNG, trainer state, rotation by save_total_limit), so resume_from_checkpoint reads it;
    # - `_load_from_checkpoint(folder, model)`: a checkpoint's weights (or adapter) into the policy and the value model;
    # - `_load_optimizer_and_scheduler(folder)`, `_load_rng_state(folder)`: the rest of a checkpoint, to resume
    #   to the same weights;
    # - `_get_learning_rate()`: the scheduler's current rate, as Trainer logs it;
    # - `_save(output_dir)`, overridden: Trainer's save_model calls it; the value model goes to value_model/.
    # Trainer's optimizer creation and saving act on `self.model`: `trainer_model` points it at the module meant.
    @contextlib.contextmanager
    def trainer_model(self, module):
        """`self.model` is `module` for a while (Trainer's optimizer creation and saving act on `self.model`)."""
        held, self.model = self.model, module
        try:
            yield
        finally:
            self.model = held

    def save_checkpoint(self, model) -> None:
        self._save_checkpoint(model, trial=None)

    def learning_rate(self) -> float:
        return self._get_learning_rate()

    def resume(self, checkpoint: str) -> None:
        """Policy (or adapter), value model, optimizer, scheduler, trainer state and RNG from `checkpoint`."""
        self._load_from_checkpoint(checkpoint, model=self.policy)
        self._load_from_checkpoint(os.path.join(checkpoint, VALUE_MODEL_FOLDER), model=self.value_model)
        self._load_optimizer_and_scheduler(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self._load_rng_state(checkpoint)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The policy (or its adapter) and the tokenizer as Trainer saves them, and the value model in `value_model/`."""
        output_dir = output_dir or self.args.output_dir
        with self.trainer_model(self.policy):
            super()._save(output_dir)
        self.value_model.save_pretrained(os.path.join(output_dir, VALUE_MODEL_FOLDER))



def check_rollout_batch(dataset, args: PPOConfig) -> None:
    """A ValueError where the prompts do not fill one rollout batch of every process."""
    if len(dataset) < args.per_device_train_batch_size * args.world_size:
        raise ValueError(
            f"The prompt dataset has {len(dataset)} rows, fewer than one rollout batch "
            f"({args.per_device_train_batch_size} per process x {args.world_size} processes): lower per_device_train_batch_size."
        )


def prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt's tokens: a conversation through the chat template with the assistant turn opened, a string as is."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
