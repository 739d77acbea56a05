"""trilm's blockwise cross-entropy against `F.cross_entropy` and transformers' LM losses, and the heads
that use it against their transformers references (loss and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss

from trilm.modeling import TrilmDecoderForCausalLM, losses
from trilm.modeling.interop import from_transformers, to_transformers

from .conftest import tiny_decoder_config
from .test_encoder import bert


def logits_and_targets(rows=37, vocab=53, ignored=(0, 5, 36), dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=generator) * 4).to(dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=generator)
    target[list(ignored)] = -100
    return logits, target


@pytest.fixture(params=[1 << 20, 200], ids=["one-block", "many-blocks"])
def block_elements(request, monkeypatch):
    """Run each test with the logits in one block and split into blocks of 3 rows (200 // 53)."""
    monkeypatch.setattr(losses, "BLOCK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("num_items_in_batch", [None, 50, torch.tensor(7)])
def test_cross_entropy_matches_torch_in_value_and_gradient(block_elements, num_items_in_batch):
    logits, target = logits_and_targets()
    expected_logits = logits.detach().clone().requires_grad_()
    if num_items_in_batch is None:
        expected = F.cross_entropy(expected_logits, target, ignore_index=-100)
    else:
        expected = F.cross_entropy(expected_logits, target, ignore_index=-100, reduction="sum") / num_items_in_batch
    actual = losses.cross_entropy(logits, target, num_items_in_batch)
    (expected * 3).backward()
    (actual * 3).backward()
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=1e-5, atol=1e-7)
    assert logits.grad[[0, 5, 36]].abs().sum() == 0  # ignored rows get no gradient


def test_bfloat16_logits_give_the_float32_loss_and_a_bfloat16_gradient(block_elements):
    logits, target = logits_and_targets(dtype=torch.bfloat16)
    reference = logits.detach().float().requires_grad_()
    expected = F.cross_entropy(reference, target)
    actual = losses.cross_entropy(logits, target)
    actual.backward()
    expected.backward()
    assert actual.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad.float(), reference.grad, rtol=1e-2, atol=1e-4)


def test_logits_masked_to_minus_infinity_give_torch_values_and_no_nan(block_elements):
    logits, target = logits_and_targets()
    masked = logits.detach().clone()
    masked[:, 0] = -torch.inf  # a vocabulary entry masked out: no target points at it
    masked[36, 7] = 1e4  # a huge logit in an ignored row
    target = torch.where(target == 0, 1, target)
    ours, theirs = masked.clone().requires_grad_(), masked.clone().requires_grad_()
    loss = losses.cross_entropy(ours, target)
    expected = F.cross_entropy(theirs, target)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(ours.grad).all()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-7)


def test_all_targets_ignored_gives_nan_like_torch():
    logits, target = logits_and_targets(rows=4, ignored=(0, 1, 2, 3))
    assert torch.isnan(F.cross_entropy(logits, target)) and torch.isnan(losses.cross_entropy(logits, target))


def test_lm_losses_match_transformers():
    logits, labels = logits_and_targets(rows=24, ignored=(0, 5, 23))
    logits, labels = logits.detach().view(2, 12, 53), labels.view(2, 12)
    for ours, theirs in ((losses.causal_lm_loss, ForCausalLMLoss), (losses.masked_lm_loss, ForMaskedLMLoss)):
        for num_items in (None, 9):
            torch.testing.assert_close(
                ours(logits, labels, vocab_size=53, num_items_in_batch=num_items),
                theirs(logits, labels, vocab_size=53, num_items_in_batch=num_items),
            )
    shift_labels = torch.randint(0, 53, (2, 12))
    torch.testing.assert_close(
        losses.causal_lm_loss(logits, labels, 53, shift_labels=shift_labels),
        ForCausalLMLoss(logits, labels, 53, shift_labels=shift_labels),
    )


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: TrilmDecoderForCausalLM(tiny_decoder_config()),
        lambda: from_transformers(bert(BertForMaskedLM)),
    ],
    ids=["decoder-vs-llama", "encoder-vs-bert"],
)
def test_heads_give_the_reference_loss_and_gradients(make_model):
    torch.manual_seed(0)
    model = make_model().eval()  # eval: no dropout (gradients flow all the same)
    reference = to_transformers(model).eval()
    ids = torch.randint(5, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :3] = -100
    ours, theirs = model(ids, labels=labels).loss, reference(ids, labels=labels).loss
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    our_grad = model.get_input_embeddings().weight.grad
    their_grad = reference.get_input_embeddings().weight.grad
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-4, atol=1e-6)


def test_a_loss_function_set_by_the_user_wins():
    model = TrilmDecoderForCausalLM(tiny_decoder_config())
    assert model.loss_function is losses.causal_lm_loss
    model.loss_function = lambda logits, labels, **kwargs: logits.sum() * 0 + 42.0
    ids = torch.randint(5, 97, (1, 6))
    assert model(ids, labels=ids).loss.item() == 42.0
