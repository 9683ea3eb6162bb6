"""Model references: folders, pickle refusal, run directories, hub ids offline, the built-in alias."""

from __future__ import annotations

import json
import shutil

import pytest

from tunery.errors import ModelError
from tunery.models import load_model, load_tokenizer, resolve_model, select_dtype, weights_sha256


def test_folder_resolves_and_loads(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "folder" and resolved.adapter_path is None
    model, tokenizer = load_model(resolved, dtype="fp32")
    assert model.config.num_hidden_layers == 2
    assert tokenizer.eos_token == "<|im_end|>"


def test_pickle_only_folder_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError) as info:
        resolve_model(str(folder))
    assert info.value.code == "pickle_refused"
    assert "execute" in info.value.message and "safe_serialization=True" in info.value.hint


def test_pickle_file_reference_is_refused(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        resolve_model(str(weights))
    assert info.value.code == "pickle_refused"


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path))
    assert "config.json" in info.value.message


def test_missing_reference_names_the_builtins():
    with pytest.raises(ModelError) as info:
        resolve_model("./no/such/model")
    assert info.value.code == "model_not_found"
    assert "smollm2-135m-instruct" in info.value.hint


def test_hub_id_offline_explains_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        resolve_model("some-org/some-model-that-is-not-cached")
    assert info.value.code == "hub_unavailable"
    assert "some-org/some-model-that-is-not-cached" in info.value.message
    assert "local folder" in info.value.hint


def test_run_directory_gives_adapter_on_base(tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model(str(tiny_model_dir), dtype="fp32")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"status": "completed", "lineage": {"base_model": str(tiny_model_dir)}}))
    resolved = resolve_model(str(run))
    assert resolved.kind == "run" and resolved.adapter_path == run / "adapter"
    loaded, _ = load_model(resolved, dtype="fp32")
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        plain = load_model(str(tiny_model_dir), dtype="fp32")[0](input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-6)
    assert not torch.allclose(plain, got, atol=1e-3)


def test_run_directory_without_outputs_is_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path))
    assert info.value.code == "run_incomplete"


def test_weights_sha256_changes_with_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert weights_sha256(copy) == weights_sha256(tiny_model_dir)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    assert weights_sha256(copy) != weights_sha256(tiny_model_dir)


def test_select_dtype_explicit_choices():
    import torch

    assert select_dtype("fp32") == torch.float32
    assert select_dtype("bf16") == torch.bfloat16
    assert select_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)


@pytest.mark.slow
def test_builtin_alias_converts_once_and_gguf_reference_loads(default_model_dir):
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.kind == "builtin" and resolved.path.resolve() == default_model_dir.resolve()
    assert any(resolved.path.glob("*.safetensors"))
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer.eos_token == "<|im_end|>"
    from tunery.models.builtin import builtin_gguf_path

    gguf = resolve_model(str(builtin_gguf_path("smollm2-135m-instruct")))
    assert gguf.kind == "gguf" and gguf.gguf_file.endswith(".gguf")


def test_a_registry_reference_given_as_a_path_says_where_the_run_directory_is():
    with pytest.raises(ModelError) as raised:
        resolve_model("helpdesk@3")
    assert "not available in this version" not in raised.value.message  # the registry exists
    assert "tunery models show helpdesk@3" in raised.value.hint


def test_loading_never_takes_compiled_kernels_from_the_hub(tiny_model_dir):
    """transformers enables Hub kernels by default when the `kernels` package is there (a dependency of
    transformers itself): on a GPU that downloads compiled code at `model.train()` and fails offline.
    tunery loads with them off, so what runs is torch's own code on every device."""
    pytest.importorskip("kernels")
    from transformers import AutoModelForCausalLM

    default = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), trust_remote_code=False)
    assert default.use_kernels, "transformers no longer enables Hub kernels by default: this test is moot"
    model, _ = load_model(str(tiny_model_dir), dtype="fp32")
    model.train()
    assert not model.use_kernels
