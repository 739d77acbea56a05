"""Language-model losses: transformers' `ForCausalLMLoss` / `ForMaskedLMLoss`, with a cross-entropy that
works through the logits in cache-sized row blocks.

`F.cross_entropy` over a (tokens, vocab) matrix writes the full log-softmax in the forward, and in the
backward a zero-filled gradient for `nll_loss` plus the full log-softmax gradient: three passes over a
tensor that, at GPT-2 size (1,024 tokens x 50,304), is 206 MB. `cross_entropy` here keeps one float per
row (its log-sum-exp) in the forward and writes the gradient once, block by block, in the backward; the
loss and the gradient are those of `F.cross_entropy` to float rounding (tests/test_losses.py). Logits in
bfloat16 are upcast block by block instead of as a whole float32 copy.
"""

import torch
from torch import nn

# Rows per block: about 2^20 logits (4 MiB in float32), so a block stays in cache between its passes.
BLOCK_ELEMENTS = 1 << 20


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, divisor) -> torch.Tensor:
        valid = target != ignore_index
        target = torch.where(valid, target, 0)
        rows = max(1, BLOCK_ELEMENTS // max(1, logits.shape[-1]))
        log_sum_exp, picked = [], []
        for block, block_target in zip(logits.split(rows), target.split(rows)):
            log_probs = torch.log_softmax(block.float(), dim=-1)
            block_picked = log_probs.gather(1, block_target[:, None]).squeeze(1)
            picked.append(block_picked)
            # log-sum-exp = logit - log-prob at the target, finite wherever the target's logit is (other
            # entries may be -inf, e.g. masked out of the vocabulary).
            log_sum_exp.append(block.gather(1, block_target[:, None]).squeeze(1).float() - block_picked)
        # Ignored rows get +inf, so that their gradient exp(logit - lse) * 0 is exactly 0.
        log_sum_exp = torch.where(valid, torch.cat(log_sum_exp), torch.inf)
        losses = torch.where(valid, -torch.cat(picked), 0.0)  # not * valid: an ignored row may pick -inf
        loss = losses.sum() / (divisor if divisor is not None else valid.sum())
        ctx.save_for_backward(logits, log_sum_exp, target, valid)
        ctx.rows, ctx.divisor = rows, divisor
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, log_sum_exp, target, valid = ctx.saved_tensors
        divisor = ctx.divisor if ctx.divisor is not None else valid.sum()
        scale = (grad_loss / divisor) * valid  # d loss / d logit_ij = scale_i * (softmax_ij - [j == target_i])
        grad = torch.empty_like(logits)
        for grad_block, block, block_lse, block_scale in zip(
            grad.split(ctx.rows), logits.split(ctx.rows), log_sum_exp.split(ctx.rows), scale.split(ctx.rows)
        ):
            if grad.dtype == torch.float32:
                torch.sub(block, block_lse[:, None], out=grad_block).exp_().mul_(block_scale[:, None])
            else:
                grad_block.copy_(torch.sub(block.float(), block_lse[:, None]).exp_().mul_(block_scale[:, None]))
        grad.scatter_add_(1, target[:, None], -scale[:, None].to(grad.dtype))
        return grad, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Cross-entropy of (N, vocab) logits against (N,) targets, as transformers' `fixed_cross_entropy`:
    the mean over non-ignored targets, or their sum divided by `num_items_in_batch` (gradient accumulation)."""
    target = target.to(logits.device)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(logits.device)
    return _CrossEntropy.apply(logits, target, ignore_index, num_items_in_batch)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss`: position t predicts labels[t + 1] (or `shift_labels[t]`)."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return cross_entropy(logits.reshape(-1, vocab_size), shift_labels.reshape(-1), num_items_in_batch, ignore_index)


def masked_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    **kwargs,
) -> torch.Tensor:
    """transformers' `ForMaskedLMLoss`: position t predicts labels[t] (masked LM and seq2seq targets)."""
    return cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1), num_items_in_batch, ignore_index)


LOSSES = {"ForCausalLM": causal_lm_loss, "ForMaskedLM": masked_lm_loss}
