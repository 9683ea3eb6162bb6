"""The fence around the compiled fast lane: every fault falls back to torch with the reason, or
becomes a TuneryError; nothing reaches C that C has not checked.

Faults: an unwritable kernel cache, a missing compiler, a corrupted cached library, structures that
differ from the mirror, adapters the lane cannot apply (lm_head, embeddings), and buffers whose
stated lengths do not cover what a pass would touch."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from tests.inference.conftest import save_lora_run
from tunery.data.template import encode_prompt
from tunery.errors import ModelError, TuneryError
from tunery.inference import Engine, SamplingParams, fastlane
from tunery.inference.fastlane import MAX_ROWS, PROJECTIONS, FastLane, FastLaneUnavailable, compile_library
from tunery.inference.quant import quantize_model

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture
def int4_tiny(tiny):
    model, tokenizer, stops = tiny
    quantize_model(model, "int4")
    return model, tokenizer, stops


@pytest.fixture
def private_kernels(tunery_home):
    """This test's own kernel cache, seeded with the session's builds (no rebuild unless the test asks)."""
    link = tunery_home / "cache" / "kernels"
    shared = link.resolve()
    link.unlink()
    shutil.copytree(shared, link, ignore=shutil.ignore_patterns("tmp*"))
    return link


def serves_text(engine: Engine, tokenizer) -> bool:
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    try:
        return engine.generate(ids, GREEDY).completion_tokens == GREEDY.max_new_tokens
    finally:
        engine.stop()


def test_an_unwritable_cache_falls_back_to_torch_with_the_reason(int4_tiny, tunery_home):
    model, tokenizer, stops = int4_tiny
    link = tunery_home / "cache" / "kernels"
    link.unlink()
    link.write_text("not a folder")  # even root cannot create files under a regular file
    engine = Engine(model, tokenizer, stops)
    assert engine.backend.name == "torch"
    assert "the fast lane does not apply: the kernel cache" in engine.decode_status
    assert "is not writable" in engine.decode_status
    assert serves_text(engine, tokenizer)
    with pytest.raises(TuneryError, match="the fast lane does not apply: the kernel cache"):
        Engine(model, tokenizer, stops, decode="lane")


def test_a_missing_compiler_falls_back_and_lane_refuses(int4_tiny, monkeypatch):
    model, tokenizer, stops = int4_tiny
    monkeypatch.setenv("CC", "/nonexistent/cc")
    engine = Engine(model, tokenizer, stops)
    assert engine.backend.name == "torch" and "the C compiler did not run" in engine.decode_status
    assert serves_text(engine, tokenizer)
    with pytest.raises(TuneryError, match="--decode lane: the fast lane does not apply: the C compiler did not run"):
        Engine(model, tokenizer, stops, decode="lane")


def test_a_corrupted_cached_library_is_rebuilt_not_loaded(int4_tiny, private_kernels, caplog):
    model, tokenizer, stops = int4_tiny
    library = compile_library()
    digest = library.with_suffix(".sha256").read_text()
    good = library.read_bytes()
    library.write_bytes(good[:1000] + b"\0" * 64 + good[1064:])  # same size, other bytes
    with caplog.at_level("WARNING", logger="tunery.inference"):
        rebuilt = compile_library()
    assert "does not match its recorded sha256; rebuilding" in caplog.text
    assert rebuilt == library and fastlane._sha256(rebuilt) == digest
    engine = Engine(model, tokenizer, stops)
    assert engine.backend.name == "lane" and serves_text(engine, tokenizer)


def test_structures_that_differ_from_the_mirror_are_refused(int4_tiny, monkeypatch):
    model, tokenizer, stops = int4_tiny
    layout = fastlane._layout()
    monkeypatch.setattr(fastlane, "_layout", lambda: layout[:3] + [layout[3] + 4] + layout[4:])
    engine = Engine(model, tokenizer, stops)
    assert engine.backend.name == "torch" and "structures differ from tunery's mirror" in engine.decode_status
    monkeypatch.undo()
    monkeypatch.setattr(fastlane, "ABI", fastlane.ABI + 1)
    with pytest.raises(FastLaneUnavailable, match="the compiled fast lane has ABI"):
        FastLane(model, max_context=64)


def test_an_lm_head_adapter_is_refused_by_the_lane_and_applied_by_torch(tiny, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.models import load_model

    model, tokenizer, stops = tiny
    run = save_lora_run(tiny_model_dir, tmp_path / "head", seed=5, targets=("q_proj", "lm_head"))
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    torch_engine = Engine(model, tokenizer, stops, decode="torch")
    torch_engine.load_adapter("head", run / "adapter")  # applied, lm_head included: logits match peft
    torch_engine.backend.slots.routing.groups = [(torch_engine.adapters["head"].slot, None)]
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        want = PeftModel.from_pretrained(base, str(run / "adapter")).eval()(torch.tensor([ids])).logits[0]
    assert torch.allclose(ours, want, atol=1e-4)
    quantized, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    quantize_model(quantized, "int4")
    lane_engine = Engine(quantized, tokenizer, stops)
    assert lane_engine.backend.name == "lane"
    with pytest.raises(ModelError, match="not lm_head") as refused:
        lane_engine.load_adapter("head", run / "adapter")
    assert "--decode torch" in refused.value.hint and not lane_engine.adapters
    assert lane_engine.backend.slots._wrappers == {}  # nothing was half-installed


def test_an_embedding_adapter_is_refused_on_every_backend(tiny, tiny_model_dir, tmp_path):
    model, tokenizer, stops = tiny
    run = save_lora_run(tiny_model_dir, tmp_path / "embed", seed=6, targets=("q_proj", "embed_tokens"))
    with pytest.raises(ModelError, match="adapts an embedding"):
        Engine(model, tokenizer, stops, decode="torch").load_adapter("embed", run / "adapter")


def pass_arguments(fast: FastLane, rows: int, cap: int):
    """Everything fd_forward takes for `rows` rows of one fresh sequence, as the lane would pass it."""
    fast.open(0, cap)
    keys, values = fast._caches[0]
    workspace = torch.empty(fast.lib.fd_workspace_floats(ctypes.byref(fast._struct), rows, cap, 0))
    logits = torch.full((rows, fast.vocab), 7.0)
    return dict(
        tokens=(ctypes.c_int64 * rows)(*[1] * rows), positions=(ctypes.c_int32 * rows)(*range(rows)),
        k=(ctypes.c_void_p * rows)(*[keys.data_ptr()] * rows), v=(ctypes.c_void_p * rows)(*[values.data_ptr()] * rows),
        caps=(ctypes.c_int32 * rows)(*[cap] * rows), cache_lens=(ctypes.c_int64 * rows)(*[keys.numel()] * rows),
        logits=logits, logits_len=logits.numel(), ws=workspace, ws_len=workspace.numel(), rows=rows)


def call(fast: FastLane, a: dict) -> int:
    return fast.lib.fd_forward(ctypes.byref(fast._struct), a["rows"], a["tokens"], a["positions"], a["k"], a["v"],
                               a["caps"], a["cache_lens"], None, fast.n_layers * len(PROJECTIONS),
                               a["logits"].data_ptr(), a["logits_len"], a["ws"].data_ptr(), a["ws_len"], 0, 0, 1)


def test_c_checks_every_buffer_against_its_length(int4_tiny):
    model, _, _ = int4_tiny
    fast = FastLane(model, max_context=64)
    assert call(fast, pass_arguments(fast, 4, 16)) == 0  # as the lane passes them: accepted
    faults = {  # each claims more than its buffer holds, or a buffer smaller than the pass needs
        "cache": lambda a: a["cache_lens"].__setitem__(2, a["cache_lens"][2] - 1),
        "logits": lambda a: a.__setitem__("logits_len", a["logits_len"] - 1),
        "workspace": lambda a: a.__setitem__("ws_len", a["ws_len"] - 1),
        "position": lambda a: a["caps"].__setitem__(3, 3),  # position 3 in a cache said to hold 3
        "token": lambda a: a["tokens"].__setitem__(0, fast.vocab),
    }
    for name, fault in faults.items():
        arguments = pass_arguments(fast, 4, 16)
        fault(arguments)
        assert fastlane.C_ERRORS[call(fast, arguments)] == name
        assert (arguments["logits"] == 7.0).all()  # refused before anything was written
    oversized = pass_arguments(fast, MAX_ROWS + 1, MAX_ROWS + 1)  # more rows than a pass takes
    assert fastlane.C_ERRORS[call(fast, oversized)] == "rows"
    with pytest.raises(TuneryError, match="its rows arguments do not fit") as error:
        fast.open(1, 32)
        fast.forward([1] * (MAX_ROWS + 1), [1] * (MAX_ROWS + 1), list(range(MAX_ROWS + 1)), [0] * (MAX_ROWS + 1))
    assert error.value.code == "lane_bad_rows"


def test_c_checks_the_model_and_adapters_at_load(int4_tiny):
    model, _, _ = int4_tiny
    fast = FastLane(model, max_context=64)
    rank = 4
    q_proj = model.model.layers[0].self_attn.q_proj
    good = (torch.randn(rank, q_proj.in_features), torch.randn(q_proj.out_features, rank), 1.0)
    fast.add_adapter(1, {(0, 0): good})
    short_b = (good[0], torch.randn(q_proj.out_features - 1, rank), 1.0)  # B one row short of q_proj's output
    with pytest.raises(TuneryError, match="refused the adapter: its lora arguments") as error:
        fast.add_adapter(2, {(0, 0): short_b})
    assert error.value.code == "lane_bad_lora" and 2 not in fast._lora_tables
    lengths = (ctypes.c_int64 * 8)()  # far too few lengths for the model
    assert fastlane.C_ERRORS[fast.lib.fd_check_model(ctypes.byref(fast._struct), lengths, 8)] == "model"
