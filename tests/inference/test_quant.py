"""Quantized serving weights: layers against a dequantized fp32 reference, whole models against the
original, LoRA adapters on quantized bases, and the --weights flag."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tunery.data.template import encode_prompt
from tunery.errors import ConfigError, ModelError
from tunery.inference import Engine, SamplingParams
from tunery.inference.quant import (
    DEQUANT_MIN_ROWS,
    Int4Linear,
    Int8GroupLinear,
    Int8Linear,
    QuantizedLinear,
    quantize_model,
)

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)
QUESTIONS = ["hi", "The printer on floor three is offline again", "Please reset my VPN token",
             "What is the capital of France?"]


def int4_reference(weight: torch.Tensor, group: int = 32) -> torch.Tensor:
    """Group-wise asymmetric int4 by min and max, scale and min in fp16 (llama.cpp's Q4_1, the default
    model's decoder in its GGUF), written out in fp32."""
    n, k = weight.shape
    w = weight.float().view(n, k // group, group)
    low, high = w.amin(-1, keepdim=True).half().float(), w.amax(-1, keepdim=True)
    scale = ((high - low) / 15).half().float()
    q = torch.round((w - low) / scale).clamp(0, 15)
    return (q * scale + low).view(n, k)


def int8_reference(weight: torch.Tensor) -> torch.Tensor:
    scale = (weight.float().abs().amax(dim=1) / 127).bfloat16().float()
    return torch.round(weight.float() / scale[:, None]).clamp(-127, 127) * scale[:, None]


def q8_0_reference(weight: torch.Tensor) -> torch.Tensor:
    """GGUF's Q8_0 (llama.cpp's quantize_row_q8_0): per group of 32, d = amax / 127 kept in fp16."""
    groups = weight.float().reshape(-1, 32)
    d = groups.abs().amax(-1, keepdim=True) / 127
    codes = torch.round(groups * torch.where(d > 0, 1 / d, torch.zeros_like(d))).clamp(-127, 127)
    return (codes * d.half().float()).view_as(weight)


@pytest.mark.parametrize("kind", [Int4Linear, Int8Linear, Int8GroupLinear])
@pytest.mark.parametrize("rows", [1, 7, DEQUANT_MIN_ROWS + 3])  # decode, short prefill (kernel), long prefill (dense)
def test_quantized_layer_computes_with_its_dequantized_weight(kind, rows):
    torch.manual_seed(0)
    linear = nn.Linear(96, 48, bias=True)
    layer = kind(linear)
    w_ref = layer.dequantized_weight()
    if kind is Int8Linear:
        assert torch.allclose(w_ref, int8_reference(linear.weight), atol=1e-6)
    if kind is Int8GroupLinear:
        assert torch.allclose(w_ref, q8_0_reference(linear.weight), atol=1e-6)
    # The weights moved by at most about a quantization step (a fitted int4 range may clip an outlier
    # to lower the group's total error), and little overall.
    assert (w_ref - linear.weight).abs().max() < 1.2 * (linear.weight.abs().max() * 2 / 15)
    assert (w_ref - linear.weight).norm() < 0.1 * linear.weight.norm()
    x = torch.randn(2, rows, 96)
    with torch.no_grad():
        ours, want = layer(x), x @ w_ref.T + linear.bias
    assert ours.shape == (2, rows, 48) and ours.dtype == torch.float32
    # Kernel rows see bf16 activations (and int4 scales in bf16) and return bf16: 2% of the output's
    # scale. The dense path is fp32.
    tolerance = 1e-5 if x.shape[0] * rows >= DEQUANT_MIN_ROWS else 2e-2
    assert (ours - want).abs().max() <= tolerance * want.abs().max()


def test_int4_keeps_weights_already_on_its_grid_exactly():
    """A decoder stored as Q4_1 (fp16 scale and min per group of 32) comes back bit for bit: the scales
    and mins the fast lane reads are the stored fp16 numbers, not bf16 roundings of them."""
    torch.manual_seed(1)
    on_grid = int4_reference(torch.randn(64, 128) * 0.05)
    layer = Int4Linear(_linear(on_grid), importance=torch.rand(128) + 0.1)
    assert torch.equal(layer.dequantized_weight(), on_grid)
    assert layer.scales.dtype == layer.mins.dtype == torch.float16


def test_an_int4_models_head_keeps_a_q8_0_head_exactly():
    """The output head of --weights int4 is int8 per group of 32 with fp16 scales: a head stored as
    Q8_0 (the default model's) comes back bit for bit, where a scale per row moved it."""
    torch.manual_seed(3)
    weight = torch.randn(64, 128) * 0.05
    weight[:, 5] *= 20  # an outlier input: a row's scale follows it, a group's only in its own group
    on_grid = q8_0_reference(weight)
    grouped = Int8GroupLinear(_linear(on_grid)).dequantized_weight()
    assert torch.equal(grouped, on_grid)
    per_row = Int8Linear(_linear(on_grid)).dequantized_weight()
    others = torch.arange(128) != 5  # a scale per row follows the outlier: the other inputs lose precision
    assert (per_row - on_grid)[:, others].norm() > 0.02 * on_grid[:, others].norm()


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    return linear


def test_fitted_rounding_beats_min_max_and_weighs_by_importance():
    """Off-grid weights: the searched (scale, min) leave less error than min/max rounding, and weighing
    inputs by their importance (mean squared activation) lowers the error where it is weighed."""
    torch.manual_seed(2)
    weight = torch.randn(96, 256) * 0.05
    importance = torch.rand(256) ** 4 * 10 + 1e-3  # a few inputs dominate, as activations' outliers do

    def weighted_error(w_q, h):
        return float(((w_q - weight).square() * h).sum())

    plain = int4_reference(weight)
    fitted = Int4Linear(_linear(weight)).dequantized_weight()
    aware = Int4Linear(_linear(weight), importance=importance).dequantized_weight()
    ones = torch.ones(256)
    assert weighted_error(fitted, ones) < 0.9 * weighted_error(plain, ones)
    assert weighted_error(aware, importance) < 0.8 * weighted_error(fitted, importance)
    assert weighted_error(aware, importance) < 0.7 * weighted_error(plain, importance)


def snap_to_served_grid(model) -> None:
    """Put the tiny model's weights on the int4 (decoder) and Q8_0 (head) grids, as the default model's
    already are (its GGUF stored Q4_1 and Q8_0, group 32): quantization then keeps them exactly."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in list(model.modules()):
            if type(module) is nn.Linear:
                grid = q8_0_reference if module is head else int4_reference
                module.weight.copy_(grid(module.weight))


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def test_quantized_model_keeps_logits_and_greedy_tokens(tiny):
    model, tokenizer, stops = tiny
    snap_to_served_grid(model)
    original = copy.deepcopy(model)
    report = quantize_model(model, "int4")
    assert report.quantized == 2 * 7 + 1 and not report.skipped
    assert report.relative_error < 1e-6  # on the grids already: nothing moves
    assert isinstance(model.get_output_embeddings(), Int8GroupLinear)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)  # untied: the embedding is untouched
    assert torch.equal(model.get_input_embeddings().weight, original.get_input_embeddings().weight)
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == report.quantized
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    for ids in prompts:
        ours, want = logits_of(model, ids), logits_of(original, ids)
        # Activations enter the kernels in bf16: within 3% of the logits' spread.
        assert (ours - want).abs().max() <= 0.03 * (want.max() - want.min())
    # Greedy decoding: every token the int4 model picks is the original model's argmax at that position,
    # up to near ties within 1% of the logits' spread (a random tiny model has many).
    for ids in prompts:
        assert_greedy_follows(model, original, ids, 12)


def assert_greedy_follows(quantized, original, ids, new_tokens: int, tie: float = 0.01) -> int:
    """The quantized model's greedy tokens, teacher-forced through the original: each is its argmax or
    within `tie` of the logits' spread of it. Returns how many were its exact argmax."""
    with torch.no_grad():
        out = quantized.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
        logits = original(out).logits[0, len(ids) - 1:-1]
    tokens = out[0, len(ids):]
    picked = logits.gather(1, tokens[:, None])[:, 0]
    best = logits.max(-1).values
    assert (picked >= best - tie * (best - logits.min(-1).values)).all()
    return int((picked == best).sum())


def test_int8_everywhere_on_a_random_model_stays_close(tiny):
    model, tokenizer, _ = tiny
    original = copy.deepcopy(model)
    report = quantize_model(model, "int8")
    assert report.quantized == 15 and all(isinstance(m, Int8Linear) for m in model.modules()
                                          if isinstance(m, QuantizedLinear))
    assert report.relative_error < 0.02
    ids = encode_prompt(tokenizer, [{"role": "user", "content": QUESTIONS[1]}])
    ours, want = logits_of(model, ids), logits_of(original, ids)
    assert (ours - want).abs().max() <= 0.05 * (want.max() - want.min())


def test_lora_adapters_still_change_rows_on_a_quantized_base(tiny, lora_runs):
    model, tokenizer, stops = tiny
    snap_to_served_grid(model)
    full = copy.deepcopy(model)
    quantize_model(model, "int4")
    engines = {"full": Engine(full, tokenizer, stops, max_batch_size=8), "int4": Engine(model, tokenizer, stops,
                                                                                         max_batch_size=8)}
    ids = encode_prompt(tokenizer, [{"role": "user", "content": QUESTIONS[0]}])
    try:
        texts = {}
        for kind, eng in engines.items():
            for name in ("alpha", "beta"):
                eng.load_adapter(name, lora_runs[name] / "adapter")
            alone = {a: eng.generate(ids, GREEDY, adapter=a).text for a in (None, "alpha", "beta")}
            assert len(set(alone.values())) == 3  # each adapter changes its rows
            slot = eng.adapters["alpha"].slot
            with torch.no_grad():  # one forward, three rows, three routings
                routing = eng.backend.slots.routing
                routing.groups = [(slot, torch.tensor([1])), (eng.adapters["beta"].slot, torch.tensor([2]))]
                mixed = eng.model(torch.tensor([ids] * 3)).logits[:, -1]
                eng.backend.slots.routing.groups = []
            texts[kind] = (alone, mixed)
        (_, mixed_full), (_, mixed_q) = texts["full"], texts["int4"]
        spread = (mixed_full.max(-1).values - mixed_full.min(-1).values)[:, None]
        assert ((mixed_q - mixed_full).abs() <= 0.03 * spread).all()
        for adapter in next(iter(engines.values())).backend.slots._wrappers.values():
            assert all(a.dtype == torch.float32 for a, _, _ in adapter.deltas.values())
        wrapped = engines["int4"].backend.slots._wrappers.values()
        assert wrapped and all(isinstance(w.base, QuantizedLinear) for w in wrapped)
    finally:
        for eng in engines.values():
            eng.stop()


def test_unfit_layers_are_skipped_and_counted():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)  # hidden 48: only down_proj (64 inputs) fits the kernels
    report = quantize_model(model, "int4")
    assert report.quantized == 1 and len(report.skipped) == 7 and "left in full precision" in report.summary()
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ModelError, match="no layer"):
        quantize_model(tiny, "int4")


def test_unknown_weight_format_and_full_are_handled(tiny):
    model, _, _ = tiny
    with pytest.raises(ConfigError) as err:
        quantize_model(model, "int3")
    assert err.value.hint and "int4" in err.value.hint
    report = quantize_model(model, "full")
    assert report.quantized == 0 and report.summary() == "weights: full precision"
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_the_weights_flag_is_validated_before_loading(tiny_model_dir):
    from tunery.cli import _register, app

    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["chat", str(tiny_model_dir), "--weights", "int3"])
    assert result.exit_code == 2 and "int3" in result.output and "full, int8, int4" in result.output
    result = runner.invoke(app, ["serve", "--model", str(tiny_model_dir), "--weights", "fp8", "--no-auth"])
    assert result.exit_code == 2 and "--weights" in result.output
    assert "int4" in runner.invoke(app, ["serve", "--help"]).output


def test_load_engine_quantizes_and_reports(tiny_model_dir, caplog):
    from tunery.inference.loaded_engine import load_engine

    with caplog.at_level("INFO", logger="tunery.inference"):
        loaded = load_engine(str(tiny_model_dir), dtype="fp32", weights="int4", max_batch_size=2)
    assert loaded.quantization.quantized == 15
    assert "int4" in caplog.text and "reconstruction error" in caplog.text
    assert loaded.decode_summary.startswith("decode: lane (compiled passes, ")
    full = load_engine(str(tiny_model_dir), dtype="fp32", max_batch_size=2)
    assert "--weights int4 decodes in the compiled fast lane" in full.decode_summary
    ids = encode_prompt(loaded.tokenizer, [{"role": "user", "content": "hi"}])
    try:
        assert loaded.engine.generate(ids, SamplingParams(max_new_tokens=4, temperature=0.0)).completion_tokens >= 1
    finally:
        loaded.engine.stop()


def test_quantized_weights_are_made_from_fp32_where_auto_would_load_bf16(tiny_model_dir, monkeypatch):
    """On a CPU with fast bf16, `--dtype auto` loads bf16; quantizing that would round a Q4_1 decoder
    off its grid first. Quantized weights load in fp32 under auto; full weights keep auto's choice."""
    from tunery.inference.loaded_engine import load_engine
    from tunery.models import load

    monkeypatch.setattr(load.host, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(load, "measure_bf16_speedup", lambda: 3.0)
    full = load_engine(str(tiny_model_dir), weights="full", max_batch_size=2)
    assert full.engine.model.model.embed_tokens.weight.dtype == torch.bfloat16
    quantized = load_engine(str(tiny_model_dir), weights="int4", max_batch_size=2)
    assert quantized.engine.model.model.embed_tokens.weight.dtype == torch.float32
    assert quantized.engine.backend.name == "lane"


@pytest.mark.slow
def test_default_model_int4_greedy_follows_full(default_model_dir):
    from tunery.models import load_model

    model, tokenizer = load_model(str(default_model_dir), dtype="fp32", device="cpu")
    quantized = copy.deepcopy(model)
    report = quantize_model(quantized, "int4")
    assert report.quantized == 211 and report.relative_error < 1e-6  # the GGUF's Q4_1 decoder and Q8_0 head, exactly
    exact = 0
    for question in ("How do I reset my VPN token?", "Explain in two sentences what DNS does."):
        ids = encode_prompt(tokenizer, [{"role": "user", "content": question}])
        exact += assert_greedy_follows(quantized, model, ids, 16)
    assert exact >= 30  # of 32: the default model has few near ties


def test_non_cpu_models_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ConfigError, match="CPU") as err:
        quantize_model(model, "int4")
    assert "--weights full" in err.value.hint


def test_small_quantized_decode_steps_use_fewer_threads_and_give_them_back(tiny):
    """Decode steps of a few rows run on `small_decode_threads`; an idle engine restores torch's setting."""
    import torch

    from tunery.inference import Engine, SamplingParams

    model, tokenizer, stops = tiny
    seen = []
    hook = model.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    eng = Engine(model, tokenizer, stops, small_decode_threads=1, speculate=False)
    try:
        eng.generate([1, 2, 3], SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True))
    finally:
        eng.stop()
        hook.remove()
    assert seen[0] == before and set(seen[1:]) == {1}  # the prefill on all threads, the decode steps on one
    assert torch.get_num_threads() == before


@pytest.fixture
def fp16_tiny(tiny_model_dir, tmp_path):
    """The tiny model saved with its weights in fp16 (off any int4 grid, as a trained checkpoint is),
    loaded as `tunery serve` loads it (on a CPU, in fp32: the values are the fp16 checkpoint's)."""
    from tunery.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    model.half().save_pretrained(tmp_path / "fp16")
    tokenizer.save_pretrained(tmp_path / "fp16")
    return load_model(str(tmp_path / "fp16"), dtype="fp32", device="cpu")


def test_int4_rounding_fitted_to_calibration_tracks_an_fp16_model_better(fp16_tiny, monkeypatch):
    """On an fp16 model, int4 weights fitted with the built-in calibration set give logits nearer the
    model's own than min/max rounding does (both written out as fp32 twins, so only rounding differs)."""
    from tests.inference.parity import dequantized_copy
    from tunery.inference import rounding
    from tunery.inference.calibration import calibration_ids

    model, tokenizer = fp16_tiny
    weight = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(weight, weight.half().float())
    reference = copy.deepcopy(model)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]

    def logits_error(quantized) -> float:
        twin = dequantized_copy(quantized)
        return sum(float((logits_of(twin, ids) - logits_of(reference, ids)).square().mean()) for ids in prompts)

    fitted = copy.deepcopy(model)
    report = quantize_model(fitted, "int4", calibration_ids(tokenizer))
    assert report.calibration_tokens > 100 and "calibration tokens" in report.summary()
    monkeypatch.setattr(rounding, "SEARCH_STEPS", 0)  # min/max rounding only
    plain = copy.deepcopy(model)
    quantize_model(plain, "int4")
    assert logits_error(fitted) < 0.8 * logits_error(plain)


def lane_logits(engine, ids: list[int], continuation: list[int]) -> torch.Tensor:
    """The lane's logits after the prompt and after each continuation token but the last, as it serves:
    the prompt's prefill, then one step over the continuation."""
    from tunery.inference.backend import Prompt, Row

    backend, key = engine.backend, 0
    first = backend.prefill([Prompt(key, ids, 0, len(ids) + len(continuation))])
    try:
        rest = backend.step([Row(key, continuation[:-1], len(ids), 0, logits=len(continuation) - 1)])
    finally:
        backend.free([key])
    return torch.cat([first.float(), rest.float()])


def test_int4_through_the_lane_follows_an_fp16_model_and_fitted_rounding_beats_min_max(fp16_tiny, monkeypatch):
    """An fp16 model served as `--weights int4` serves it (rounding fitted on the calibration chats,
    decoded in the fast lane): teacher-forced along the model's own greedy 16 tokens after each question,
    the lane's top token is the model's or a near tie, its logits stay near the model's, and nearer
    than min/max rounding's."""
    from tests.inference.parity import spread
    from tunery.data.template import stop_token_ids
    from tunery.inference import rounding
    from tunery.inference.calibration import calibration_ids

    model, tokenizer = fp16_tiny
    stops = stop_token_ids(tokenizer)
    cases = []
    for question in QUESTIONS:
        ids = encode_prompt(tokenizer, [{"role": "user", "content": question}])
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=0)
            cases.append((ids, out[0, len(ids):].tolist(), model(out).logits[0, len(ids) - 1:-1]))

    def served(fitted: bool):
        quantized = copy.deepcopy(model)
        with monkeypatch.context() as patch:
            if not fitted:
                patch.setattr(rounding, "SEARCH_STEPS", 0)  # min/max rounding only
            quantize_model(quantized, "int4", calibration_ids(tokenizer))
        engine = Engine(quantized, tokenizer, stops, decode="lane")
        assert engine.backend.name == "lane"
        return [(lane_logits(engine, ids, tokens), want) for ids, tokens, want in cases]

    fitted, plain = served(True), served(False)

    def agreement(pairs) -> int:
        return sum(int((got.argmax(-1) == want.argmax(-1)).sum()) for got, want in pairs)

    def error(pairs) -> float:  # squared logits error against the fp16 model
        return sum(float((got - want).square().mean()) for got, want in pairs)

    def worst(pairs) -> float:  # largest logit error, in shares of the model's logit spread at that position
        return max(float(((got - want).abs().amax(-1) / spread(want)).max()) for got, want in pairs)

    def tie(pairs) -> float:  # how far below the model's best logit the lane's top token was, as above
        return max(float(((want.max(-1).values - want.gather(1, got.argmax(-1)[:, None])[:, 0]) / spread(want)).max())
                   for got, want in pairs)

    # Measured (tiny model, fp16, one thread): fitted 57 of 64 top tokens, squared error 0.79x min/max's,
    # worst logit error 5.6% of the spread (min/max 6.3%); the lane's top token at worst 3.2% below the best.
    assert agreement(fitted) >= 54
    assert worst(fitted) <= 0.08 and tie(fitted) <= 0.05
    assert error(fitted) < 0.9 * error(plain)
