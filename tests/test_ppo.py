"""Classic PPO (`trilm rlhf --algorithm ppo`): its maths against hand-computed values, end to end through
the CLI, exact resumption, and clear errors before training."""

import json
import math

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trilm.recipes import rlhf
from trilm.recipes.common import ppo
from trilm.recipes.cli import main as trilm
from trilm.tokenization import train_tokenizer

from .test_alignment import metrics, no_training, pairs, run_config, sft, write_jsonl  # noqa: F401  (fixtures)


# ----------------------------------------------------------------------------- maths, by hand
def test_gae_on_a_short_trajectory_and_a_masked_one():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second reply ends after two tokens
    advantages, returns = ppo.generalized_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # Row 1: deltas 0.3, 0.9*0.7-0.6 = 0.03, 0.9*0.6-0.5 = 0.04; A2 = 0.3, A1 = 0.03 + 0.45*0.3, A0 = 0.04 + 0.45*A1.
    # Row 2 (third token masked: no reward, value 0): A1 = 2 - 1 = 1, A0 = 0.9*1 - 1 + 0.45*1 = 0.35.
    expected = torch.tensor([[0.11425, 0.165, 0.3], [0.35, 1.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.tensor([[0.61425, 0.765, 1.0], [1.35, 2.0, 0.0]]))


def test_whitening_uses_only_the_masked_entries():
    values = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 4, unbiased variance (4 + 0 + 4) / 2 = 4, so standard deviation 2.
    torch.testing.assert_close(ppo.masked_whiten(values, mask)[:, :3], torch.tensor([[-1.0, 0.0, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ppo.masked_whiten(values, mask, shift_mean=False)[:, :3], torch.tensor([[3.0, 4.0, 5.0]]), atol=1e-6, rtol=0)


def test_the_clipped_policy_loss_within_at_and_beyond_the_clip_range():
    ratios = torch.tensor([[1.5, 1.1, 1.5, 0.5, 1.2, 9.0]])
    advantages = torch.tensor([[1.0, 2.0, -1.0, -1.0, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    old = torch.zeros_like(ratios)
    loss, stats = ppo.clipped_policy_loss(ratios.log(), old, advantages, mask, cliprange=0.2)
    # Per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2 (clipped), -2.2, 1.5 (pessimistic: unclipped), 0.8 (clipped),
    # -1.2 (at the edge: equal, not counted as clipped).
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 2.2 + 1.5 + 0.8 - 1.2) / 5))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(2 / 5))
    logs = ratios.log()[0, :5]
    torch.testing.assert_close(stats["approxkl"], 0.5 * (logs**2).mean())
    torch.testing.assert_close(stats["ratio"], torch.tensor((1.5 + 1.1 + 1.5 + 0.5 + 1.2) / 5))


def test_the_clipped_value_loss_within_and_beyond_the_clip_range():
    predicted = torch.tensor([[0.5, 0.1, -0.5, 3.0]])
    old_values, returns = torch.zeros(1, 4), torch.ones(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = ppo.clipped_value_loss(predicted, old_values, returns, mask, cliprange_value=0.2)
    # 0.5 -> clipped to 0.2: max(0.25, 0.64) = 0.64 (clipped); 0.1 within: 0.81; -0.5 -> -0.2: max(2.25, 1.44) = 2.25.
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 0.81 + 2.25) / 3))
    torch.testing.assert_close(clipfrac, torch.tensor(1 / 3))


def test_kl_shaped_rewards_put_the_score_on_the_last_reply_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -4.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([5.0, -1.0])
    rewards, kl = ppo.kl_shaped_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1, estimator="k1")
    # Log-ratios: [0.5, 0, -1] and [0, 1, (masked)]; reward -0.1 x log-ratio, the score added at the last token.
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 0.1 + 5.0], [0.0, -0.1 - 1.0, 0.0]]))
    _, k3 = ppo.kl_shaped_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1, estimator="k3")
    k3_of = lambda d: math.exp(-d) - 1 + d  # noqa: E731
    torch.testing.assert_close(k3, torch.tensor([[k3_of(0.5), 0.0, k3_of(-1.0)], [0.0, k3_of(1.0), 0.0]]))


# -------------------------------------------------------------------------------- end to end
def prompts_file(tmp_path, count: int = 64) -> str:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in pairs(count)])


PPO = dict(algorithm="ppo", reward_funcs=["tests.test_alignment:letter_share"], per_device_train_batch_size=16, max_completion_length=8,
           temperature=1.0, kl_coef=0.01, num_mini_batches=2)


def test_ppo_from_a_reward_function_raises_the_reward_and_saves_the_value_model(tmp_path, sft):
    config = run_config(tmp_path, "ppo", model_name_or_path=str(sft), use_peft=False, train_file=prompts_file(tmp_path),
                        max_steps=30, learning_rate=0.01, **PPO)
    assert trilm(["rlhf", "--config", str(config)]) == 0
    folder = tmp_path / "ppo"
    result = metrics(folder)
    assert result["train_reward_end"] > result["train_reward_start"] + 0.3
    assert result["train_steps_clipped"] > 0 and 0 < result["train_kl_max"] < 100  # clipping acts; the KL is measured
    assert result["train_seconds_per_update"] > 0
    AutoModelForCausalLM.from_pretrained(folder)
    value = AutoModelForSequenceClassification.from_pretrained(folder / "value_model")
    assert type(value).__name__ == "TrilmDecoderForSequenceClassification" and value.config.num_labels == 1


def test_ppo_logs_every_figure_of_an_update(tmp_path, sft):
    config = run_config(tmp_path, "logged", model_name_or_path=str(sft), use_peft=False, train_file=prompts_file(tmp_path), max_steps=2, **PPO)
    trainer, _ = rlhf.run(*rlhf.parse(["--config", str(config)]))
    row = next(row for row in trainer.state.log_history if "objective/scores" in row)
    for name in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg",
                 "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/explained_variance", "val/num_eos_tokens", "learning_rate"):
        assert name in row and math.isfinite(row[name]), name
    # Four epochs of two mini-batches per update: eight optimizer steps, as the schedule counted.
    assert trainer.lr_scheduler.last_epoch == 2 * 4 * 2


def test_ppo_with_lora_against_a_reward_model_folder(tmp_path, sft):
    reward = run_config(tmp_path, "rm", model_name_or_path=str(sft), use_peft=False, train_file=write_jsonl(tmp_path / "p.jsonl", pairs(32)))
    assert trilm(["reward", "--config", str(reward)]) == 0
    config = run_config(tmp_path, "ppo-lora", model_name_or_path=str(sft), train_file=prompts_file(tmp_path, 16),
                        reward_model_name_or_path=[str(tmp_path / "rm")], reward_weights=[1.0, 0.5], max_steps=2,
                        missing_eos_penalty=1.0, **{**PPO, "per_device_train_batch_size": 8})
    _, _, args, _ = parsed = rlhf.parse(["--config", str(config)])
    tokenizer = AutoTokenizer.from_pretrained(sft)
    start = rlhf.value_model(args, AutoModelForCausalLM.from_pretrained(sft), tokenizer)  # it starts from the reward model
    torch.testing.assert_close(start.score.weight, AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").score.weight)
    rlhf.run(*parsed)
    folder = tmp_path / "ppo-lora"
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    model = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert model.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False).shape == (1, 5)
    AutoModelForSequenceClassification.from_pretrained(folder / "value_model")


def test_without_a_reward_model_the_value_model_starts_from_the_policy(tmp_path, sft):
    config = run_config(tmp_path, "v", model_name_or_path=str(sft), train_file=prompts_file(tmp_path), **PPO)
    _, _, args, _ = rlhf.parse(["--config", str(config)])
    policy = AutoModelForCausalLM.from_pretrained(sft)
    value = rlhf.value_model(args, policy, AutoTokenizer.from_pretrained(sft))
    assert type(value).__name__ == "TrilmDecoderForSequenceClassification" and value.config.num_labels == 1
    theirs = policy.base_model.state_dict()
    for key, tensor in value.base_model.state_dict().items():
        torch.testing.assert_close(tensor, theirs[key], rtol=0, atol=0, msg=key)
    assert value.base_model.embed_tokens.weight.data_ptr() != policy.base_model.embed_tokens.weight.data_ptr()  # a copy


@pytest.mark.parametrize("use_peft", [False, True])
def test_a_ppo_run_stopped_part_way_resumes_to_the_same_weights(tmp_path, sft, use_peft, monkeypatch):
    values = dict(model_name_or_path=str(sft), use_peft=use_peft, train_file=prompts_file(tmp_path), max_steps=6, save_strategy="steps",
                  save_steps=2, learning_rate=3e-3, **PPO)
    assert trilm(["rlhf", "--config", str(run_config(tmp_path, "whole", **values))]) == 0
    parted = run_config(tmp_path, "parted", **values)
    update, calls = ppo.PPOTrainer.ppo_update, {"n": 0}

    def stop_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("stopped part-way")
        return update(self, *args, **kwargs)

    monkeypatch.setattr(ppo.PPOTrainer, "ppo_update", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        trilm(["rlhf", "--config", str(parted)])
    monkeypatch.setattr(ppo.PPOTrainer, "ppo_update", update)
    assert (tmp_path / "parted" / "checkpoint-2" / "value_model" / "model.safetensors").is_file()
    assert trilm(["rlhf", "--config", str(parted), "--resume_from_checkpoint", str(tmp_path / "parted" / "checkpoint-2")]) == 0
    weights = "adapter_model.safetensors" if use_peft else "model.safetensors"
    for name in (weights, "value_model/model.safetensors"):
        expected, actual = load_file(tmp_path / "whole" / name), load_file(tmp_path / "parted" / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")
    trained = load_file(tmp_path / "whole" / weights)
    if use_peft:  # LoRA's B matrices start at zero
        assert any(value.abs().sum() > 0 for key, value in trained.items() if "lora_B" in key)
    else:
        start = load_file(sft / "model.safetensors")
        assert any(not torch.equal(value, start[key]) for key, value in trained.items())


# ------------------------------------------------------------------------------------ bad input
def test_ppo_refuses_num_mini_batches_that_do_not_divide_the_rollout_batch(tmp_path, sft, no_training):
    config = run_config(tmp_path, "bad", model_name_or_path=str(sft), train_file=prompts_file(tmp_path), **{**PPO, "num_mini_batches": 3})
    with pytest.raises(ValueError, match=r"num_mini_batches=3 does not divide the rollout batch \(per_device_train_batch_size=16\)"):
        trilm(["rlhf", "--config", str(config)])


def test_ppo_refuses_fewer_prompts_than_one_rollout_batch(tmp_path, sft, monkeypatch):
    from trilm.recipes.common import answers

    monkeypatch.setattr(answers, "answer_accuracy", lambda *a, **k: pytest.fail("held-out answers measured first"))
    # The built-in corpus, cut to 8 training questions (its held-out questions would be answered first).
    config = run_config(tmp_path, "bad", model_name_or_path=str(sft), max_train_samples=8, **PPO)
    with pytest.raises(ValueError, match=r"has 8 rows, fewer than one rollout batch \(16 per process x 1 processes\)"):
        trilm(["rlhf", "--config", str(config)])


def test_ppo_refuses_a_value_model_of_another_tokenizer(tmp_path, sft, no_training, monkeypatch):
    from trilm.recipes.common import answers

    other = tmp_path / "other"
    model = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    model.save_pretrained(other)
    train_tokenizer(texts=["entirely different words here"] * 50, kind="bpe", family="decoder", vocab_size=300).save_pretrained(other)
    config = run_config(tmp_path, "bad", model_name_or_path=str(sft), value_model_name_or_path=str(other), **PPO)  # built-in corpus
    monkeypatch.setattr(answers, "answer_accuracy", lambda *a, **k: pytest.fail("held-out answers measured first"))
    with pytest.raises(ValueError, match="value model .* has a different tokenizer"):
        trilm(["rlhf", "--config", str(config)])
    grpo = run_config(tmp_path, "grpo", model_name_or_path=str(sft), train_file=prompts_file(tmp_path), value_model_name_or_path=str(other))
    with pytest.raises(ValueError, match="value_model_name_or_path is read by algorithm ppo only"):
        trilm(["rlhf", "--config", str(grpo)])
