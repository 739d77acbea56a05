"""Every decoding strategy runs through `generate`, honouring eos_token_id, max_new_tokens and repetition_penalty."""

import pytest
import torch

from trilm.modeling import TrilmDecoderForCausalLM

from .conftest import tiny_decoder_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TrilmDecoderForCausalLM(tiny_decoder_config()).eval()


PROMPT = torch.tensor([[5, 17, 33, 8], [41, 9, 12, 70]])

STRATEGIES = {
    "greedy": dict(do_sample=False),
    "beam": dict(do_sample=False, num_beams=3),
    "top_k": dict(do_sample=True, top_k=5),
    "top_p": dict(do_sample=True, top_p=0.8),
    "temperature": dict(do_sample=True, temperature=0.7),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_generates_max_new_tokens_of_valid_ids(model, strategy):
    torch.manual_seed(0)
    out = model.generate(PROMPT, max_new_tokens=7, eos_token_id=None, **STRATEGIES[strategy])
    assert out.shape == (2, 11)
    assert torch.equal(out[:, :4], PROMPT)
    assert out.min() >= 0 and out.max() < model.config.vocab_size


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    greedy = model.generate(PROMPT, max_new_tokens=6, do_sample=False)
    torch.manual_seed(1)
    top1 = model.generate(PROMPT, max_new_tokens=6, do_sample=True, top_k=1)
    assert torch.equal(greedy, top1)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(PROMPT, max_new_tokens=6, do_sample=True, temperature=2.0))
    assert torch.equal(*runs)


def test_beam_search_returns_the_requested_sequences(model):
    out = model.generate(PROMPT, max_new_tokens=5, num_beams=4, num_return_sequences=2, do_sample=False)
    assert out.shape == (4, 9)


def test_generation_stops_at_eos(model):
    greedy = model.generate(PROMPT[:1], max_new_tokens=8, do_sample=False, eos_token_id=None)
    stop_token = int(greedy[0, 6])  # the third generated token
    out = model.generate(PROMPT[:1], max_new_tokens=8, do_sample=False, eos_token_id=stop_token)
    assert out.shape[1] <= 7 and int(out[0, -1]) == stop_token


def test_repetition_penalty_changes_and_reduces_repetition(model):
    plain = model.generate(PROMPT[:1], max_new_tokens=20, do_sample=False, eos_token_id=None)
    penalised = model.generate(
        PROMPT[:1], max_new_tokens=20, do_sample=False, eos_token_id=None, repetition_penalty=5.0
    )
    assert not torch.equal(plain, penalised)
    assert len(set(penalised[0].tolist())) >= len(set(plain[0].tolist()))
