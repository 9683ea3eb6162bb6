"""The fast lane (compiled decode passes): its logits against the dequantized model, rows, sequences
and threads that must not change a result, LoRA per row, the portable build, the engine decoding
lone and concurrent requests in it, and what makes it step aside."""

from __future__ import annotations

import copy
import platform
import threading

import pytest
import torch
from transformers import DynamicCache

from tests.inference.parity import assert_follows, dequantized_copy, generated_tokens, spread
from tunery.data.template import encode_prompt
from tunery.errors import TuneryError
from tunery.inference import Engine, SamplingParams
from tunery.inference.batch import cache_tensors
from tunery.inference.fastlane import FLAGS, MAX_ROWS, FastLane, FastLaneUnavailable, compile_library
from tunery.inference.quant import quantize_model

PROMPT = "The printer on floor three is offline again, the printer on floor three"


@pytest.fixture
def int4_tiny(tiny):
    model, tokenizer, stops = tiny
    quantize_model(model, "int4")
    return model, tokenizer, stops


def prefill(model, ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    return cache, out.logits[0, -1]


def test_logits_match_the_dequantized_model_step_by_step(int4_tiny):
    model, tokenizer, _ = int4_tiny
    reference = dequantized_copy(model)
    ids = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    cache, logits = prefill(reference, ids)
    fast = FastLane(model, max_context=256)
    fast.load(1, cache_tensors(cache), len(ids), capacity=len(ids) + 4)  # small: the cache must grow on the way
    token, position = int(logits.argmax()), len(ids)
    for _ in range(12):
        ours = fast.forward([1], [token], [position], [0]).clone()[0]
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[position]]), cache=cache,
                             use_cache=True).logits[0, -1]
        # Activations enter the int4 products as two int8 codes per value (about 15 bits): within 0.2%
        # of the logits' spread (one int8 code alone left ~1%).
        assert (ours - want).abs().max() <= 0.002 * spread(want)
        token, position = int(want.argmax()), position + 1
    lane_keys, lane_values = fast._caches[1]  # [layers, kv heads, capacity, head dim]
    assert lane_keys.shape[2] >= position
    # The cache it kept is the reference's, up to the same rounding.
    for i, (ref_keys, ref_values) in enumerate(cache_tensors(cache)):
        keys, values = lane_keys[i, :, :position].unsqueeze(0).float(), lane_values[i, :, :position].unsqueeze(0).float()
        assert keys.shape == ref_keys.shape and values.shape == ref_values.shape
        assert (keys - ref_keys).abs().max() <= 0.005 * ref_keys.abs().max()  # fp16
        assert (values - ref_values).abs().max() <= 0.005 * ref_values.abs().max()


def test_a_prompt_prefilled_in_the_lane_matches_the_reference(int4_tiny):
    model, tokenizer, _ = int4_tiny
    reference = dequantized_copy(model)
    ids = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    assert len(ids) > 2 * MAX_ROWS  # three passes, the last one partial
    _, want = prefill(reference, ids)
    fast = FastLane(model, max_context=256)
    fast.open(0, capacity=len(ids) + 1)
    for start in range(0, len(ids), MAX_ROWS):
        chunk = ids[start:start + MAX_ROWS]
        logits = fast.forward([0] * len(chunk), chunk, list(range(start, start + len(chunk))), [0] * len(chunk),
                              logits_from=len(chunk) - 1).clone()  # the lane reuses its logits buffer
        assert logits.shape == (1, fast.vocab)  # the head ran for the last row only
    assert (logits[0] - want).abs().max() <= 0.002 * spread(want)
    # The same rows with every row's logits: the last row is the same.
    fast.open(0, capacity=len(ids) + 1)
    for start in range(0, len(ids), MAX_ROWS):
        chunk = ids[start:start + MAX_ROWS]
        every = fast.forward([0] * len(chunk), chunk, list(range(start, start + len(chunk))), [0] * len(chunk))
    assert every.shape == (len(chunk), fast.vocab) and torch.equal(every[-1], logits[0])


def test_one_pass_of_several_rows_equals_passes_of_one_and_threads_change_nothing(int4_tiny):
    model, tokenizer, _ = int4_tiny
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in (PROMPT, "hi", "VPN token?")]
    caches = [prefill(model, ids)[0] for ids in prompts]
    tokens = [5, 77, 300, 12, 9, 41, 200]
    fast = FastLane(model, max_context=256)

    def fresh():
        for key, (ids, cache) in enumerate(zip(prompts, caches, strict=True)):
            fast.load(key, cache_tensors(cache), len(ids), capacity=len(ids) + 8)

    results = {}
    for threads in (1, 2, 3):
        # A draft: seven tokens of one sequence in one pass, against seven passes of one token.
        fresh()
        n = len(prompts[0])
        together = fast.forward([0] * 7, tokens, list(range(n, n + 7)), [0] * 7, threads=threads).clone()
        fresh()
        one_by_one = torch.stack([fast.forward([0], [t], [n + i], [0], threads=threads)[0].clone()
                                  for i, t in enumerate(tokens)])
        assert torch.allclose(together, one_by_one, rtol=0, atol=1e-5 * float(spread(one_by_one).max()))
        # A batch: one token of each of three sequences in one pass, against a pass each.
        fresh()
        positions = [len(ids) for ids in prompts]
        batch = fast.forward([0, 1, 2], tokens[:3], positions, [0, 0, 0], threads=threads).clone()
        fresh()
        alone = torch.stack([fast.forward([key], [tokens[key]], [positions[key]], [0], threads=threads)[0].clone()
                             for key in range(3)])
        assert torch.allclose(batch, alone, rtol=0, atol=1e-5 * float(spread(alone).max()))
        results[threads] = (together, batch)
    # Threads split the output rows; every number is computed the same way whatever the split.
    for threads in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[threads], strict=True))


def test_two_lanes_used_at_once_give_their_own_results(int4_tiny):
    """Two engines in one process may run passes at the same time; one of them then runs on its own
    thread, and neither result changes."""
    model, tokenizer, _ = int4_tiny
    ids = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    cache, _ = prefill(model, ids)
    lanes = [FastLane(model, max_context=256) for _ in range(2)]

    def run(lane, out):
        lane.load(0, cache_tensors(cache), len(ids), capacity=64)
        out.extend(lane.forward([0], [5 + i], [len(ids) + i], [0], threads=2)[0].clone() for i in range(30))

    alone: list = []
    run(lanes[0], alone)
    results: list[list] = [[], []]
    workers = [threading.Thread(target=run, args=(lane, out)) for lane, out in zip(lanes, results, strict=True)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert all(torch.equal(torch.stack(out), torch.stack(alone)) for out in results)


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("march", ["x86-64", "haswell"] if X86 else [None])
def test_other_builds_compute_the_same(int4_tiny, march):
    """Other CPUs take other paths through the C file: plain C (x86-64: SSE2 only), 256-bit AVX2 without
    VNNI or AVX-512 (haswell). They must give this machine's numbers."""
    model, tokenizer, _ = int4_tiny
    flags = tuple(f for f in FLAGS if not f.startswith("-march")) + ((f"-march={march}",) if march else ())
    other = compile_library(flags)
    assert other != compile_library()
    ids = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    cache, _ = prefill(model, ids)
    out = {}
    for name, library in (("native", None), ("other", other)):
        fast = FastLane(model, max_context=256, library=library)
        for key in (0, 1):
            fast.load(key, cache_tensors(cache), len(ids), capacity=64)
        n = len(ids)
        out[name] = torch.cat([fast.forward([0], [7], [n], [0]).clone(),  # one row
                               fast.forward([0] * 3, [8, 9, 10], [n + 1, n + 2, n + 3], [0] * 3).clone(),  # a draft
                               fast.forward([0, 1], [11, 12], [n + 4, n], [0, 0]).clone()])  # two sequences
    assert torch.allclose(out["native"], out["other"], rtol=0, atol=1e-4 * float(spread(out["native"]).max()))


def test_wider_layers_with_an_odd_pair_of_groups(tmp_path):
    """hidden 192 (three pairs of groups: one 512-bit step and a 256-bit tail), intermediate 704 (eleven
    pairs: with AVX-512 two octets of groups, a quad and a pair), head_dim 64, a bias on q/k/v (qwen2),
    three query heads per key/value head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=192, intermediate_size=704, num_hidden_layers=2,
                                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=128,
                                         tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)  # the random init leaves them at 0
    quantize_model(model, "int4")
    reference = dequantized_copy(model)
    ids = list(range(5, 25))
    cache, _ = prefill(reference, ids)
    tokens = [30, 31, 32, 33]
    with torch.no_grad():
        want = reference(input_ids=torch.tensor([tokens]), position_ids=torch.tensor([list(range(20, 24))]),
                         cache=cache, use_cache=True).logits[0]
    cache, _ = prefill(reference, ids)
    builds = {"native": None}
    if X86:
        for march in ("x86-64", "haswell"):
            builds[march] = compile_library(tuple(f for f in FLAGS if not f.startswith("-march")) + (f"-march={march}",))
    for library in builds.values():
        fast = FastLane(model, max_context=128, library=library)
        fast.load(0, cache_tensors(cache), 20, capacity=32)
        draft = fast.forward([0] * 4, tokens, [20, 21, 22, 23], [0] * 4).clone()
        fast.load(0, cache_tensors(cache), 20, capacity=32)
        single = torch.stack([fast.forward([0], [t], [20 + i], [0])[0].clone() for i, t in enumerate(tokens)])
        assert torch.equal(draft, single)  # a row computes the same whatever rows run beside it
        for ours in (draft, single):
            assert ((ours - want).abs().max(-1).values <= 0.002 * spread(want)).all()


def test_lora_deltas_are_applied_like_the_torch_path_row_by_row(int4_tiny, lora_runs):
    model, tokenizer, stops = int4_tiny
    engine = Engine(model, tokenizer, stops)
    engine.load_adapter("alpha", lora_runs["alpha"] / "adapter")
    engine.load_adapter("top", lora_runs["top"] / "adapter")  # adapted in layer 1 only
    ids = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    fast, n = engine.backend.lane, len(ids)
    slots = {"base": 0, "alpha": engine.adapters["alpha"].slot, "top": engine.adapters["top"].slot}
    want = {}
    for name, slot in slots.items():  # the torch path, one adapter at a time
        engine.backend.slots.routing.groups = [(slot, None)] if slot else []
        cache, _ = prefill(model, ids)
        fast.load(slot, cache_tensors(cache), n, capacity=16)
        with torch.no_grad():
            want[name] = model(input_ids=torch.tensor([[11]]), position_ids=torch.tensor([[n]]), cache=cache,
                               use_cache=True).logits[0, -1]
    engine.backend.slots.routing.groups = []
    # One pass, three sequences, three adapters (the base, every layer, layer 1 only).
    ours = fast.forward(list(slots.values()), [11, 11, 11], [n, n, n], list(slots.values())).clone()
    for row, name in enumerate(slots):
        # The torch path's kernels take bf16 activations: within 3% of the spread.
        assert (ours[row] - want[name]).abs().max() <= 0.03 * spread(want[name])
    assert (ours[1] - ours[0]).abs().max() > 0.1 * spread(ours[0])  # the adapters changed their rows
    assert (ours[2] - ours[0]).abs().max() > 0.1 * spread(ours[0])
    engine.unload_adapter("alpha")
    engine._step([])  # retires the slot: the torch model and the lane forget it together
    assert slots["alpha"] not in fast._lora_tables
    assert all(slots["alpha"] not in wrapper.deltas for wrapper in engine.backend.slots._wrappers.values())


def test_a_lone_request_decodes_in_the_fast_lane_with_and_without_drafts(int4_tiny):
    model, tokenizer, stops = int4_tiny
    reference = dequantized_copy(model)
    repetitive = "reset the VPN token, reset the VPN token, reset the VPN token, reset the VPN token"
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in (repetitive, PROMPT)]
    params = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
    texts, stats = {}, {}
    for speculate in (False, True):
        engine = Engine(model, tokenizer, stops, speculate=speculate)
        assert engine.backend.name == "lane"
        tokens = generated_tokens(engine)
        try:
            outs = [engine.generate(ids, params) for ids in prompts]
        finally:
            engine.stop()
        assert all(out.completion_tokens == 40 and out.finish_reason == "length" for out in outs)
        for ids, produced in zip(prompts, tokens.values(), strict=True):
            assert len(produced) == 40
            assert_follows(reference, ids, produced)
        texts[speculate], stats[speculate] = [out.text for out in outs], dict(engine.stats)
    # A pass per token (each request's first token came from its prefill).
    assert stats[False]["decode_passes"] == 2 * 39
    # Drafts are scored with the same arithmetic as single tokens: the text is the one without them.
    assert texts[True] == texts[False]
    assert stats[True]["accepted_draft_tokens"] > 0 and stats[True]["decode_passes"] < 2 * 39


def test_requests_arriving_mid_decode_join_the_lanes_passes(int4_tiny, lora_runs):
    model, tokenizer, stops = int4_tiny
    reference = dequantized_copy(model)
    engine = Engine(model, tokenizer, stops, speculate=False)
    engine.load_adapter("alpha", lora_runs["alpha"] / "adapter")
    engine.start()
    tokens = generated_tokens(engine)
    first = encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}])
    second = encode_prompt(tokenizer, [{"role": "user", "content": "Please reset my VPN token"}])
    params = SamplingParams(max_new_tokens=30, temperature=0.0, ignore_eos=True)
    events, started, go, done = {1: [], 2: [], 3: []}, threading.Event(), threading.Event(), threading.Event()

    def sink(key):
        def on_event(event):  # runs on the engine thread: holding it here pauses the first request
            events[key].append(event)
            if key == 1 and len(events[1]) == 8:
                started.set()
                go.wait(30)
            if event.finish_reason and all(e and e[-1].finish_reason for e in events.values()):
                done.set()
        return on_event

    try:
        first_id = engine.submit(first, params, sink(1))
        assert started.wait(30)
        passes_alone = engine.stats["decode_passes"]
        second_id = engine.submit(second, params, sink(2))
        engine.submit(second, params, sink(3), adapter="alpha")
        go.set()
        assert done.wait(60)
    finally:
        engine.stop()
    assert [e[-1].finish_reason for e in events.values()] == ["length"] * 3
    # After the others arrived, their rows shared passes.
    assert engine.backend.name == "lane" and engine.stats["decode_passes"] < 3 * 29
    assert 7 <= passes_alone < 29
    assert_follows(reference, first, tokens[first_id])
    assert_follows(reference, second, tokens[second_id])
    assert not engine.backend.lane._caches  # finished sequences leave the lane


def test_a_long_prompt_is_prefilled_in_chunks_beside_the_running_rows(int4_tiny):
    """A prompt that arrives while another request decodes takes the free rows of the next passes; the
    running request keeps getting a token every pass; both follow the reference; an abort mid-prefill
    frees the lane."""
    model, tokenizer, stops = int4_tiny
    reference = dequantized_copy(model)
    engine = Engine(model, tokenizer, stops, speculate=False).start()
    tokens = generated_tokens(engine)
    first = encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    long = encode_prompt(tokenizer, [{"role": "user", "content": " ".join([PROMPT] * 4)}])
    assert len(long) > 4 * MAX_ROWS
    order, started, go, done = [], threading.Event(), threading.Event(), threading.Event()

    def sink(key):
        def on_event(event):
            order.append((key, event))
            if key == 1 and len(order) == 3:
                started.set()
                go.wait(30)
            if key == 2 and event.finish_reason:
                done.set()
        return on_event

    try:
        first_id = engine.submit(first, SamplingParams(max_new_tokens=60, temperature=0.0, ignore_eos=True), sink(1))
        assert started.wait(30)
        long_id = engine.submit(long, SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True), sink(2))
        go.set()
        assert done.wait(60)
        # An abort while the prompt is still being prefilled.
        aborted = threading.Event()
        abort_id = engine.submit(long, SamplingParams(max_new_tokens=10, temperature=0.0),
                                 lambda event: event.finish_reason and aborted.set())
        engine.abort(abort_id)
        assert aborted.wait(30)
        assert engine.wait_idle(60)
    finally:
        engine.stop()
    keys = [key for key, _ in order]
    # The first request's tokens kept coming while the long prompt was prefilled: several of them
    # arrived after the second request was submitted and before its first token.
    assert keys[3:keys.index(2)].count(1) >= 3
    assert engine.stats["prefill_passes"] >= 4
    assert_follows(reference, first, tokens[first_id])
    assert_follows(reference, long, tokens[long_id])
    assert len(tokens[long_id]) == 10 and abort_id not in tokens
    assert not engine.backend.lane._caches


def test_sampling_in_the_fast_lane_is_reproducible_with_a_seed(int4_tiny):
    model, tokenizer, stops = int4_tiny
    engine = Engine(model, tokenizer, stops)
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    params = SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=123, ignore_eos=True)
    try:
        runs = [engine.generate(ids, params).text for _ in range(2)]
        other = engine.generate(ids, SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=7,
                                                    ignore_eos=True)).text
    finally:
        engine.stop()
    assert runs[0] == runs[1] and runs[0] != other and engine.stats["draft_tokens"] == 0


def test_what_the_fast_lane_does_not_take(tiny):
    model, tokenizer, stops = tiny
    full = Engine(copy.deepcopy(model), tokenizer, stops)
    assert full.backend.name == "torch" and "int4" in full.decode_status
    from transformers import LlamaConfig, LlamaForCausalLM

    odd = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=96, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2))
    quantize_model(odd, "int4")
    with pytest.raises(FastLaneUnavailable, match="multiple of 64"):
        FastLane(odd, max_context=64)
    # Bad arguments are refused before the C code runs.
    quantize_model(model, "int4")
    fast = FastLane(model, max_context=32)
    fast.load(0, [(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))] * 2, 3, capacity=8)
    with pytest.raises(TuneryError, match="its rows arguments do not fit"):
        fast.forward([0] * (MAX_ROWS + 1), [1] * (MAX_ROWS + 1), list(range(3, 20)), [0] * (MAX_ROWS + 1))
    with pytest.raises(TuneryError, match="no sequence 5"):
        fast.forward([5], [1], [3], [0])
    with pytest.raises(TuneryError, match="its token arguments do not fit"):
        fast.forward([0], [10**6], [3], [0])  # not a token of this vocabulary
    with pytest.raises(TuneryError, match="its position arguments do not fit"):
        fast.forward([0, 0], [1, 2], [31, 32], [0, 0])  # past the context
    assert fast._caches[0][0].shape[2] == 32  # grown up to the context, no further


def test_without_a_compiler_the_engine_keeps_its_torch_path(int4_tiny, monkeypatch):
    model, tokenizer, stops = int4_tiny
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FastLaneUnavailable, match="no C compiler"):
        compile_library()
    monkeypatch.undo()
    monkeypatch.setenv("CC", "/nonexistent/cc")  # part of the build's key: no earlier build is reused
    engine = Engine(model, tokenizer, stops)
    assert engine.backend.name == "torch" and "the C compiler did not run" in engine.decode_status
    try:
        out = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True))
    finally:
        engine.stop()
    assert out.completion_tokens == 5


@pytest.mark.slow
def test_default_model_in_the_fast_lane_follows_full_precision(default_model_dir):
    from tunery.data.template import stop_token_ids
    from tunery.models import load_model

    model, tokenizer = load_model(str(default_model_dir), dtype="fp32", device="cpu")
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "int4")
    engine = Engine(quantized, tokenizer, stop_token_ids(tokenizer))
    assert engine.backend.name == "lane"
    tokens = generated_tokens(engine)
    exact = 0
    try:
        for question in ("How do I reset my VPN token?", "Explain in two sentences what DNS does."):
            ids = encode_prompt(tokenizer, [{"role": "user", "content": question}])
            tokens.clear()
            engine.generate(ids, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True))
            (produced,) = tokens.values()
            with torch.no_grad():
                logits = model(torch.tensor([ids + produced])).logits[0, len(ids) - 1:-1]
            picked = logits.gather(1, torch.tensor(produced)[:, None])[:, 0]
            best = logits.max(-1).values
            assert (picked >= best - 0.02 * spread(logits)).all()  # near ties at most
            exact += int((picked == best).sum())
    finally:
        engine.stop()
    assert exact >= 30  # of 32
