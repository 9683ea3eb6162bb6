"""GGUF export of a run on the real default model (SmolLM2-135M-Instruct): what the tiny model cannot show.

The real vocabulary (49k tokens, byte-level BPE with digit splitting), its chat template and
realistic logit magnitudes must all survive the trip through the `gguf` writer and transformers' reader.
"""

from __future__ import annotations

import json

import pytest
from evaluation.adapter_runs import make_adapter_run

from tunery.export import export_run


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
