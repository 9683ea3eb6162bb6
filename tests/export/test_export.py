"""Exports reload in the ecosystem's own loaders with the run's logits; bad runs and drift are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from evaluation.adapter_runs import make_adapter_run

from tunery.data.template import encode_prompt, stop_token_ids
from tunery.errors import ConfigError, ExportError
from tunery.export import export_run
from tunery.export.run import MANIFEST

PROMPTS = ([{"role": "user", "content": "Reset my VPN token please."}],
           [{"role": "system", "content": "JSON only"}, {"role": "user", "content": "Printer offline, floor 3"}])


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "tuned")


@pytest.fixture(scope="module")
def run_logits(run_dir):
    """The run's own logits on PROMPTS: its adapter on its base, unmerged, fp32 (computed independently)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = json.loads((run_dir / "run.json").read_text())["lineage"]["base_model"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      str(run_dir / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    return logits_of(model, tokenizer)


def logits_of(model, tokenizer):
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([encode_prompt(tokenizer, p)])).logits[0].float() for p in PROMPTS]


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_adapter_export_loads_in_peft_with_identical_logits(run_dir, run_logits, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(run_dir, "adapter", tmp_path / "adapter")
    out = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(result.files)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                      str(out))
    assert max_diff(logits_of(model, AutoTokenizer.from_pretrained(out)), run_logits) == 0.0
    manifest = json.loads((out / "tunery-export.json").read_text())
    assert manifest["verification"]["max_abs_diff"] == 0.0 and manifest["run"] == "tuned"


def test_merged_export_is_a_plain_transformers_folder(run_dir, run_logits, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    result = export_run(run_dir, "merged", tmp_path / "merged", dtype="fp32")
    out = tmp_path / "merged"
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert max_diff(logits_of(model, tokenizer), run_logits) < 1e-4
    assert result.max_abs_diff < 1e-4 and result.verification.top1_agreement == 1.0
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert "<|im_start|>" in tokenizer.chat_template
    assert stop_token_ids(tokenizer) == stop_token_ids(AutoTokenizer.from_pretrained(run_dir))


def test_merged_bf16_stays_within_its_tolerance(run_dir, run_logits, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(run_dir, "merged", tmp_path / "bf16", dtype="bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    measured = max_diff(logits_of(model, AutoTokenizer.from_pretrained(tmp_path / "bf16")), run_logits)
    assert 0 < measured <= result.tolerance


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_gguf_round_trips_through_transformers(run_dir, run_logits, tmp_path, gguf_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(run_dir, "gguf", tmp_path / "gguf", dtype=gguf_type, ollama=True)
    path = tmp_path / "gguf" / f"tuned-{gguf_type}.gguf"
    assert result.path == str(path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=path.name)
    source_tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert [encode_prompt(tokenizer, p) for p in PROMPTS] == [encode_prompt(source_tokenizer, p) for p in PROMPTS]
    measured = max_diff(logits_of(model, tokenizer), run_logits)
    assert measured <= result.tolerance
    assert measured < 1e-4 if gguf_type == "f32" else measured > 1e-4  # q8_0 really is quantised
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert f"FROM ./{path.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_failed_run_is_refused(tiny_model_dir, tmp_path):
    run = make_adapter_run(tiny_model_dir, tmp_path / "broken", status="failed")
    with pytest.raises(ExportError) as info:
        export_run(run, "merged", tmp_path / "out")
    assert info.value.code == "run_not_completed" and "'failed'" in info.value.message
    assert not (tmp_path / "out").exists()


def test_existing_output_and_bad_options_are_refused(run_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export_run(run_dir, "merged", tmp_path / "taken")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_run(run_dir, "onnx", tmp_path / "o")
    with pytest.raises(ConfigError, match="GGUF dtype"):
        export_run(run_dir, "gguf", tmp_path / "o", dtype="q4_k")
    with pytest.raises(ConfigError, match="--ollama needs"):
        export_run(run_dir, "merged", tmp_path / "o", ollama=True)


def test_an_existing_target_is_replaced_only_with_overwrite_and_never_a_folder_of_other_files(run_dir, tmp_path):
    from typer.testing import CliRunner

    from tunery.cli import _register, app

    _register()
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "notes.txt").write_text("mine")
    args = ["export", str(run_dir), "--format", "adapter"]
    refused = CliRunner().invoke(app, [*args, "--out", str(exports / "notes.txt")])
    assert refused.exit_code == 1 and "output_exists" in refused.output and "--overwrite" in refused.output
    assert "Traceback" not in refused.output and (exports / "notes.txt").read_text() == "mine"
    replaced = CliRunner().invoke(app, [*args, "--out", str(exports / "notes.txt"), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (exports / "notes.txt" / MANIFEST).is_file()  # the file gave way to a complete, verified export
    export_run(run_dir, "adapter", exports / "v1")
    with pytest.raises(ExportError, match="earlier export") as info:
        export_run(run_dir, "adapter", exports / "v1")
    assert info.value.code == "output_exists" and "--overwrite" in info.value.hint
    before = (exports / "v1" / MANIFEST).stat().st_ino
    export_run(run_dir, "adapter", exports / "v1", overwrite=True)
    assert (exports / "v1" / MANIFEST).stat().st_ino != before and (exports / "v1" / "adapter_config.json").is_file()
    assert (exports / "v1").stat().st_mode & 0o777 == 0o700  # weights trained on private data: owner-only
    assert {p.stat().st_mode & 0o777 for p in (exports / "v1").rglob("*") if p.is_file()} == {0o600}
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not a tunery export"):
        export_run(run_dir, "adapter", theirs, overwrite=True)
    assert [p.name for p in theirs.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in exports.iterdir()) == ["notes.txt", "v1"]  # no temp or old siblings left


def test_drift_is_an_error_and_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
    from tunery.export import gguf_file

    # A writer that forgets llama.cpp's q/k row order produces a file that loads but computes wrong.
    monkeypatch.setattr(gguf_file, "permute_for_llama_cpp", lambda weights, n_head: weights)
    with pytest.raises(ExportError, match="failed verification") as info:
        export_run(run_dir, "gguf", tmp_path / "exports" / "drift", dtype="f32")
    assert info.value.code == "export_verification_failed"
    assert list((tmp_path / "exports").iterdir()) == []  # neither the output nor its temp folder


def test_full_fine_tune_run_exports_merged_but_has_no_adapter(tiny_model_dir, tmp_path):
    run = tmp_path / "full"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"status": "completed", "method": "full",
                                              "lineage": {"base_model": str(tiny_model_dir)}}))
    result = export_run(run, "merged", tmp_path / "merged", dtype="fp32")
    assert result.max_abs_diff == 0.0
    with pytest.raises(ExportError, match="no adapter"):
        export_run(run, "adapter", tmp_path / "adapter")


def test_qlora_run_merges_into_the_dequantised_base(run_dir, tiny_model_dir, tmp_path):
    import bitsandbytes.functional as bnb
    from safetensors.torch import load_file

    qrun = tmp_path / "qlora"
    shutil.copytree(run_dir, qrun)
    info = json.loads((qrun / "run.json").read_text())
    (qrun / "run.json").write_text(json.dumps({**info, "method": "qlora"}))
    export_run(qrun, "merged", tmp_path / "merged", dtype="fp32")
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.layers.0.mlp.gate_proj.weight"  # not adapted: only quantisation touched it
    weight = original[name].to(torch.bfloat16)
    packed, state = bnb.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    expected = bnb.dequantize_4bit(packed, state).float()
    assert torch.equal(merged[name], expected)
    assert not torch.equal(merged[name], original[name])


def test_export_cli_json(run_dir, tmp_path):
    from typer.testing import CliRunner

    from tunery.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["export", str(run_dir), "--format", "merged", "--dtype", "fp32",
                                      "--out", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["format"] == "merged" and data["verification"]["max_abs_diff"] < 1e-4
    failed = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--format", "merged",
                                      "--out", str(tmp_path / "x")])
    assert failed.exit_code == 1 and "not a run directory" in failed.output
