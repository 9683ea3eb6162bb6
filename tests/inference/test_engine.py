"""The engine against Hugging Face `generate` and peft: same tokens, batched or not, any adapter mix.

Every test that takes `served` runs once per backend: torch on full precision (exactly `generate`'s
tokens) and the fast lane on int4 (the dequantized model's picks up to near ties)."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.inference.parity import assert_follows, generated_tokens, with_adapter
from tunery.data.template import encode_prompt
from tunery.errors import ConfigError, ModelError, NotFoundError, ResourceError
from tunery.inference import Engine, SamplingParams
from tunery.inference.lora import read_peft_adapter

QUESTIONS = ["hi", "The printer on floor three is offline again", "Please reset my VPN token",
             "What is the capital of France?", "Outlook keeps crashing"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def prompt(tokenizer, text):
    return encode_prompt(tokenizer, [{"role": "user", "content": text}])


def hf_greedy(model, tokenizer, stops, ids, max_new_tokens=12) -> str:
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


@pytest.fixture
def engine(served):
    model, tokenizer, stops, decode, _, _ = served
    eng = Engine(model, tokenizer, stops, decode=decode, max_batch_size=8)
    assert eng.backend.name == decode
    yield eng
    eng.stop()


def submit_all(eng, jobs):
    """Submit before the loop starts so every job lands in the same batch; returns (text, event) in order."""
    results, texts, all_done = [None] * len(jobs), [""] * len(jobs), threading.Event()

    def sink(i):
        def on_event(event):
            texts[i] += event.text
            if event.finish_reason:
                results[i] = (texts[i], event)
                if all(r is not None for r in results):
                    all_done.set()
        return on_event

    for i, (ids, params, adapter) in enumerate(jobs):
        eng.submit(ids, params, sink(i), adapter)
    eng.start()
    assert all_done.wait(60)
    return results


def test_engine_matches_hf_generate_alone_and_batched(served, engine):
    model, tokenizer, stops, decode, reference, tie = served
    prompts = [prompt(tokenizer, q) for q in QUESTIONS]
    tokens = generated_tokens(engine)
    batched = submit_all(engine, [(ids, GREEDY, None) for ids in prompts])
    passes = engine.stats["prefill_passes"] + engine.stats["decode_passes"]
    alone = [engine.generate(ids, GREEDY).text for ids in prompts]
    if decode == "torch":  # the same arithmetic either way
        assert [text for text, _ in batched] == alone
    # In the lane a batch's prompts are prefilled by torch (fp32 activations) and a lone one by the lane
    # (rounded activations): each must follow the reference, up to the same near ties.
    for i, ids in enumerate(prompts):
        assert_follows(reference, ids, tokens[i + 1], tie)
        assert_follows(reference, ids, tokens[len(prompts) + i + 1], tie)
    if decode == "torch":
        assert alone == [hf_greedy(model, tokenizer, stops, ids) for ids in prompts]
    # One prefill for the five, then the rows decode together: far fewer passes than one per token.
    longest = max(event.completion_tokens for _, event in batched)
    assert passes <= 1 + longest < sum(event.completion_tokens for _, event in batched)


def test_max_tokens_ends_with_length_and_counts(served, engine):
    tokenizer = served[1]
    result = engine.generate(prompt(tokenizer, "hi"), SamplingParams(max_new_tokens=3, temperature=0))
    assert result.finish_reason == "length" and result.completion_tokens == 3
    assert result.prompt_tokens == len(prompt(tokenizer, "hi"))


def test_stop_string_truncates_the_output(served, engine):
    tokenizer = served[1]
    ids = prompt(tokenizer, QUESTIONS[1])
    full = engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0)).text
    # Three plain characters past the start (a random model's bytes need not decode to whole characters).
    start = next(i for i in range(2, len(full) - 2) if all(c.isascii() and c.isprintable() for c in full[i:i + 3]))
    stop = full[start:start + 3]
    result = engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0, stop=(stop,)))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index(stop)]


def test_seeded_sampling_repeats_and_differs_across_seeds(served, engine):
    tokenizer = served[1]
    ids = prompt(tokenizer, "hi")
    runs = [engine.generate(ids, SamplingParams(max_new_tokens=16, temperature=1.0, seed=s)).text for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    nucleus = engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=3)).text
    assert nucleus == engine.generate(ids, GREEDY).text  # a tiny nucleus holds only the top token


def test_context_overflow_is_refused(engine):
    with pytest.raises(ConfigError, match="context"):
        engine.submit([1] * 1000, SamplingParams(max_new_tokens=100), lambda e: None)


def test_abort_frees_the_row(served, engine):
    tokenizer = served[1]
    events, finished = [], threading.Event()

    def on_event(event):
        events.append(event)
        if len(events) == 1:
            engine.abort(request_id)
        if event.finish_reason:
            finished.set()

    request_id = engine.submit(prompt(tokenizer, "hi"), SamplingParams(max_new_tokens=500, temperature=1.0, seed=1),
                               on_event)
    engine.start()
    assert finished.wait(30)
    assert events[-1].finish_reason == "abort" and events[-1].completion_tokens < 500
    assert engine.generate(prompt(tokenizer, "hi"), GREEDY).finish_reason in ("stop", "length")
    assert engine.wait_idle(30) and engine.num_running == 0


def _peft_reference(tiny_model_dir, run_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    with torch.no_grad():
        return peft_model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("name", ["alpha", "top"])  # every layer, and the top layer only
def test_lora_logits_match_peft(tiny, tiny_model_dir, lora_runs, name):
    """The adapter wrappers the torch model gets (both backends prefill through them)."""
    model, tokenizer, stops = tiny
    engine = Engine(model, tokenizer, stops, decode="torch")
    ids = prompt(tokenizer, QUESTIONS[2])
    engine.load_adapter(name, lora_runs[name] / "adapter")
    slot = engine.adapters[name].slot
    routing = engine.backend.slots.routing
    with torch.no_grad():
        routing.groups = [(slot, None)]
        ours = model(torch.tensor([ids])).logits[0]
        routing.groups = []
        bare = model(torch.tensor([ids])).logits[0]
    reference = _peft_reference(tiny_model_dir, lora_runs[name], ids)
    assert torch.allclose(ours, reference, atol=1e-4)
    assert not torch.allclose(bare, reference, atol=1e-2)


def test_mixed_adapter_batch_equals_each_alone(served, lora_runs, engine):
    """Each row follows its own adapter, batched or alone. Through torch, batched and alone give the same
    text; the lane prefills a lone prompt in its own passes and several together through torch, whose
    activations round differently, so there both are checked against the adapted reference instead."""
    _, tokenizer, _, decode, reference, tie = served
    engine.load_adapter("alpha", lora_runs["alpha"] / "adapter")
    engine.load_adapter("beta", lora_runs["beta"] / "adapter")
    ids = prompt(tokenizer, QUESTIONS[0])
    tokens = generated_tokens(engine)
    jobs = [(ids, GREEDY, a) for a in (None, "alpha", "beta", "alpha", None)]
    batched = [text for text, _ in submit_all(engine, jobs)]
    alone = {a: engine.generate(ids, GREEDY, adapter=a).text for a in (None, "alpha", "beta")}
    references = {None: reference, **{a: with_adapter(reference, lora_runs[a] / "adapter") for a in ("alpha", "beta")}}
    for request_id, adapter in enumerate([a for _, _, a in jobs] + list(alone), start=1):
        assert_follows(references[adapter], ids, tokens[request_id], 3 * tie)  # LoRA deltas: 3% in the lane
    if decode == "torch":
        assert batched == [alone[a] for _, _, a in jobs]
    assert len(set(alone.values())) == 3  # the adapters really differ


def test_unload_and_lru_cap(served, lora_runs):
    model, tokenizer, stops, decode, _, _ = served
    eng = Engine(model, tokenizer, stops, decode=decode, max_adapters=1)
    try:
        eng.load_adapter("alpha", lora_runs["alpha"] / "adapter")
        eng.load_adapter("beta", lora_runs["beta"] / "adapter")
        assert set(eng.adapters) == {"beta"}
        eng.unload_adapter("beta")
        with pytest.raises(NotFoundError):
            eng.submit([1, 2], GREEDY, lambda e: None, adapter="beta")
        with pytest.raises(NotFoundError):
            eng.unload_adapter("beta")
    finally:
        eng.stop()
        eng.backend.unload_adapter(1)
        eng.backend.unload_adapter(2)


def test_dora_adapters_are_refused(tiny_model_dir, tmp_path):
    from tests.inference.conftest import save_lora_run

    run = save_lora_run(tiny_model_dir, tmp_path / "dora", seed=3, use_dora=True)
    with pytest.raises(ModelError, match="DoRA"):
        read_peft_adapter(run / "adapter")


def test_a_full_queue_refuses_more(tiny):
    model, tokenizer, stops = tiny
    eng = Engine(model, tokenizer, stops, decode="torch", max_queued=2)
    for _ in range(2):
        eng.submit([1, 2, 3], GREEDY, lambda e: None)
    with pytest.raises(ResourceError):
        eng.submit([1, 2, 3], GREEDY, lambda e: None)
    eng.stop()


def test_ngram_draft_proposes_what_followed_the_latest_earlier_occurrence():
    from tunery.inference.speculation import ngram_draft

    assert ngram_draft([5, 6, 7, 8, 9, 1, 5, 6, 7], 3) == [8, 9, 1]
    assert ngram_draft([5, 6, 7, 8, 5, 6, 7, 2, 5, 6, 7], 2) == [2, 5]  # the latest occurrence wins
    assert ngram_draft([1, 2, 3, 4], 4) == []  # nothing repeats
    assert ngram_draft([4, 9, 3, 9], 4) == []  # single tokens are not enough
    assert ngram_draft([5, 6, 7, 5, 6, 7], 0) == []


def test_speculation_keeps_greedy_output_and_accepts_drafts(served):
    """A lone greedy row verifies prompt-lookup drafts: same tokens as one-at-a-time decoding."""
    model, tokenizer, stops, decode, reference, tie = served
    repetitive = "reset the VPN token, reset the VPN token, reset the VPN token, reset the VPN token"
    prompts = [prompt(tokenizer, q) for q in [repetitive, *QUESTIONS]]
    params = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
    outputs = {}
    for speculate in (False, True):
        eng = Engine(model, tokenizer, stops, decode=decode, speculate=speculate)
        tokens = generated_tokens(eng)
        try:
            outputs[speculate] = [eng.generate(ids, params).text for ids in prompts]
            for i, ids in enumerate(prompts):
                assert_follows(reference, ids, tokens[i + 1], tie)
            stats = dict(eng.stats)
        finally:
            eng.stop()
    assert outputs[True] == outputs[False]
    assert stats["draft_tokens"] > 0 and stats["accepted_draft_tokens"] > 0
    assert stats["decode_passes"] < len(prompts) * (params.max_new_tokens - 1)  # some passes gave several tokens
