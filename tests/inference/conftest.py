"""Fixtures for the engine tests: the tiny model, the same per backend, and LoRA adapters saved by peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def save_lora_run(base_dir: Path, run_dir: Path, *, seed: int, rank: int = 4, use_dora: bool = False,
                  layers: list[int] | None = None, targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """A run directory as training writes it: adapter/ (PEFT, safetensors) and run.json; `layers`: only those."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                        init_lora_weights=False, use_dora=use_dora, layers_to_transform=layers)
    model = get_peft_model(base, config)
    with torch.no_grad():  # random B too, so the adapter visibly changes the output
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(run_dir / "adapter"), safe_serialization=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "completed", "lineage": {"base_model": str(base_dir)}}))
    return run_dir


@pytest.fixture(scope="session")
def lora_runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-runs")
    runs = {name: save_lora_run(tiny_model_dir, root / name, seed=seed) for name, seed in (("alpha", 1), ("beta", 2))}
    runs["top"] = save_lora_run(tiny_model_dir, root / "top", seed=3, layers=[1])  # like `lora.layers: 1`
    return runs


@pytest.fixture
def tiny(tiny_model_dir):
    """(model, tokenizer, stop ids) of the tiny model in float32; fresh per test (engines wrap its layers)."""
    from tunery.data.template import stop_token_ids
    from tunery.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    return model, tokenizer, stop_token_ids(tokenizer)


@pytest.fixture(params=["torch", "lane"])
def served(request, tiny):
    """(model, tokenizer, stops, decode, reference, tie) for each backend: full precision through torch,
    whose greedy picks are the model's own argmax (up to float rounding); int4 through the fast lane, whose picks follow the
    dequantized model up to near ties (its activations enter the products rounded to about 15 bits)."""
    import copy

    from tests.inference.parity import dequantized_copy
    from tunery.inference.quant import quantize_model

    model, tokenizer, stops = tiny
    if request.param == "torch":
        return model, tokenizer, stops, "torch", copy.deepcopy(model), 1e-4
    quantize_model(model, "int4")
    return model, tokenizer, stops, "lane", dequantized_copy(model), 0.02


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model runs fastest on one thread, and shared CI cores make spinning OpenMP workers crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
