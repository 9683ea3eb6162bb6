"""Packing keeps examples apart, and the chunked loss matches the reference loss and gradients."""

from __future__ import annotations

import pytest
import torch

import tunery.training.batch_loss as loss_module
from tests.training.conftest import make_conversations
from tunery.data.packing import pack_examples, pad_examples, pad_packed_row
from tunery.data.template import IGNORE_INDEX, encode_conversation
from tunery.models import load_model
from tunery.training.batch_loss import chunked_loss, reference_loss


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    return model, tokenizer


def encode(tokenizer, n=5):
    return [encode_conversation(tokenizer, c) for c in make_conversations(n)]


def test_packed_example_loss_equals_its_loss_alone(tiny):
    model, tokenizer = tiny
    examples = encode(tokenizer)
    packed = pack_examples(examples)
    assert packed.input_ids.shape[0] == 1
    assert packed.position_ids[0, len(examples[0].input_ids)] == 0  # positions restart per example
    logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
    start = 0
    for example in examples:
        n = len(example.input_ids)
        alone = pack_examples([example])
        alone_logits = model(input_ids=alone.input_ids, position_ids=alone.position_ids, use_cache=False).logits[0]
        targets = alone.targets[0]
        mask = targets != IGNORE_INDEX
        loss_alone = torch.nn.functional.cross_entropy(alone_logits[mask], targets[mask])
        loss_packed = torch.nn.functional.cross_entropy(logits[start:start + n][mask], targets[mask])
        assert abs(loss_alone.item() - loss_packed.item()) < 1e-4
        start += n


def test_packing_without_position_reset_would_leak(tiny):
    """Guard the test above: with one running position range, later examples' losses change."""
    model, tokenizer = tiny
    examples = encode(tokenizer, 3)
    packed = pack_examples(examples)
    leaky = model(input_ids=packed.input_ids, use_cache=False).logits[0]
    fine = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
    n0 = len(examples[0].input_ids)
    assert torch.allclose(leaky[:n0], fine[:n0], atol=1e-5)
    assert not torch.allclose(leaky[n0:], fine[n0:], atol=1e-3)


def test_targets_never_cross_example_boundaries(tiny):
    _, tokenizer = tiny
    examples = encode(tokenizer, 3)
    packed = pack_examples(examples)
    ends = torch.tensor([len(e.input_ids) for e in examples]).cumsum(0) - 1
    assert (packed.targets[0, ends] == IGNORE_INDEX).all()
    assert packed.num_trained_tokens == sum(e.num_trained for e in examples)


def loss_and_grads(model, batch, loss=chunked_loss):
    model.zero_grad(set_to_none=True)
    sums = loss(model, batch)
    sums.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sums, grads


def head_rows(m, b):
    return chunked_loss(m, b, row_multiple=32)


# (the loss of the row as packed, the loss of the filled row): the last case also runs the head on a
# multiple of 32 rows for the filled row only, so the comparison covers both paddings at once
@pytest.mark.parametrize(("plain_loss", "loss"), [(chunked_loss, chunked_loss), (reference_loss, reference_loss),
                                                  (chunked_loss, head_rows)],
                         ids=["chunked", "reference", "chunked-head-rows"])
def test_a_filler_lengthens_a_packed_row_without_changing_its_loss_or_gradients(tiny, plain_loss, loss):
    model, tokenizer = tiny
    examples = encode(tokenizer, 3)
    row = pack_examples(examples)
    n = row.input_ids.shape[1]
    padded = pad_packed_row(row, 64, tokenizer.pad_token_id)
    assert padded.input_ids.shape[1] % 64 == 0 and padded.filler_tokens == padded.input_ids.shape[1] - n > 0
    assert padded.position_ids[0, n] == 0 and padded.position_ids[0, -1] == padded.filler_tokens - 1  # its own example
    assert (padded.targets[0, n:] == IGNORE_INDEX).all()
    assert (padded.num_tokens, padded.num_trained_tokens, padded.num_examples) == (
        row.num_tokens, row.num_trained_tokens, row.num_examples)
    plain, plain_grads = loss_and_grads(model, row, plain_loss)
    filled, filled_grads = loss_and_grads(model, padded, loss)
    assert (filled.num_tokens, filled.num_correct) == (plain.num_tokens, plain.num_correct)
    assert filled.loss_sum.item() == pytest.approx(plain.loss_sum.item(), rel=1e-5)
    assert plain_grads.keys() == filled_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.allclose(filled_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_the_output_head_on_a_multiple_of_rows_gives_the_same_loss_and_gradients(tiny):
    model, tokenizer = tiny
    row = pack_examples(encode(tokenizer, 3))
    assert row.num_trained_tokens % 32  # so zero rows are added
    plain, plain_grads = loss_and_grads(model, row)
    filled, filled_grads = loss_and_grads(model, row, head_rows)
    assert (filled.num_tokens, filled.num_correct) == (plain.num_tokens, plain.num_correct)
    assert filled.loss_sum.item() == pytest.approx(plain.loss_sum.item(), rel=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(filled_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_a_filler_is_added_only_where_a_packed_row_needs_one(tiny):
    _, tokenizer = tiny
    examples = encode(tokenizer, 2)
    row = pack_examples(examples)
    padded = pad_packed_row(row, 64, tokenizer.pad_token_id)
    assert pad_packed_row(padded, 64, tokenizer.pad_token_id) is padded  # already a multiple
    assert pad_packed_row(row, 0, tokenizer.pad_token_id) is row  # off
    rows = pad_examples(examples, tokenizer.pad_token_id)
    assert pad_packed_row(rows, 64, tokenizer.pad_token_id) is rows  # padded rows have their own layout
    no_pad = pad_packed_row(row, 64, None)  # a tokenizer without a pad token: the row's last token fills
    assert torch.equal(no_pad.position_ids, padded.position_ids) and torch.equal(no_pad.targets, padded.targets)
    assert (no_pad.input_ids[0, row.input_ids.shape[1]:] == row.input_ids[0, -1]).all()


def test_padded_and_packed_batches_give_the_same_loss(tiny):
    model, tokenizer = tiny
    examples = encode(tokenizer, 4)
    packed = reference_loss(model, pack_examples(examples))
    padded = reference_loss(model, pad_examples(examples, tokenizer.pad_token_id))
    assert packed.num_tokens == padded.num_tokens
    assert abs(packed.loss_sum.item() - padded.loss_sum.item()) < 1e-3


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("packing", [True, False])
def test_chunked_loss_matches_reference_loss_and_gradients(tiny, packing, recompute, monkeypatch):
    monkeypatch.setattr(loss_module, "RECOMPUTE_MIN_BYTES", 0 if recompute else 1 << 40)
    model, tokenizer = tiny
    examples = encode(tokenizer, 6)
    batch = pack_examples(examples) if packing else pad_examples(examples, tokenizer.pad_token_id)
    results = []
    for fn in (reference_loss, lambda m, b: chunked_loss(m, b, chunk_tokens=7)):
        model.zero_grad()
        sums = fn(model, batch)
        sums.loss_sum.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((sums, grads))
    (ref, ref_grads), (chunk, chunk_grads) = results
    assert ref.num_tokens == chunk.num_tokens and ref.num_correct == chunk.num_correct
    assert abs(ref.loss_sum.item() - chunk.loss_sum.item()) < 1e-4
    assert ref_grads.keys() == chunk_grads.keys()
    for name in ref_grads:
        assert torch.allclose(ref_grads[name], chunk_grads[name], atol=1e-5, rtol=1e-4), name
    model.zero_grad()
