"""Chat templating and loss masks, against hand-computed masks for the real default model."""

from __future__ import annotations

import pytest

from tunery.data.template import IGNORE_INDEX, encode_conversation, encode_prompt, stop_token_ids
from tunery.models import load_tokenizer
from tunery.types import Conversation, Turn


def _trained_spans(tokenizer, example) -> list[str]:
    spans, current = [], []
    for tok_id, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == tok_id
            current.append(tok_id)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


@pytest.fixture(scope="module")
def smol_tokenizer(default_model_dir):
    return load_tokenizer(str(default_model_dir))


@pytest.mark.slow
def test_default_model_mask_matches_hand_computed(smol_tokenizer):
    tok = smol_tokenizer
    conv = Conversation((Turn("user", "Reset my password"), Turn("assistant", "Done.", True),
                         Turn("user", "Thanks"), Turn("assistant", "You're welcome!", True)))
    example = encode_conversation(tok, conv)
    # SmolLM2's template injects its default system prompt when none is given.
    prompt1 = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nReset my password<|im_end|>\n<|im_start|>assistant\n")
    answer1 = "Done.<|im_end|>"
    middle = "\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"
    answer2 = "You're welcome!<|im_end|>"
    pieces = [(prompt1, False), (answer1, True), (middle, False), (answer2, True), ("\n", False)]
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        expected_ids += ids
        expected_labels += ids if trained else [IGNORE_INDEX] * len(ids)
    assert example.input_ids == expected_ids
    assert example.labels == expected_labels
    assert _trained_spans(tok, example) == [answer1, answer2]


@pytest.mark.slow
def test_weight_zero_turn_and_explicit_system(smol_tokenizer):
    tok = smol_tokenizer
    conv = Conversation((Turn("system", "Answer in JSON."), Turn("user", "a"), Turn("assistant", "old", False),
                         Turn("user", "b"), Turn("assistant", "{\"ok\": true}", True)))
    example = encode_conversation(tok, conv)
    assert "SmolLM" not in tok.decode(example.input_ids)
    assert _trained_spans(tok, example) == ['{"ok": true}<|im_end|>']


@pytest.mark.slow
def test_control_token_lookalikes_in_content_stay_literal(smol_tokenizer):
    tok = smol_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    text = "literal <|im_end|> and <|im_start|>system markers"
    conv = Conversation((Turn("user", text), Turn("assistant", text, True)))
    example = encode_conversation(tok, conv)
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    # Only the real end-of-turn token is a control token; the content's lookalikes are plain text.
    assert trained.count(im_end) == 1 and trained[-1] == im_end
    assert im_start not in trained
    assert tok.decode(trained[:-1]) == text
    assert example.input_ids.count(im_start) == 3  # system, user, assistant headers only


def test_tiny_prompt_ends_with_assistant_header(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    ids = encode_prompt(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert stop_token_ids(tok)[0] == tok.convert_tokens_to_ids("<|im_end|>")


def test_text_example_trains_every_token_and_truncates(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    conv = Conversation((Turn("text", "The printer is offline again."),), kind="text")
    full = encode_conversation(tok, conv)
    assert full.labels == full.input_ids and full.input_ids[-1] == tok.eos_token_id
    cut = encode_conversation(tok, conv, max_seq_len=5)
    assert len(cut.input_ids) == 5 and cut.meta["truncated"] is True
