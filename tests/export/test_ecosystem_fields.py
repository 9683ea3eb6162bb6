"""What other tools read from tunery's artifacts: GGUF keys as llama.cpp's converter names them, config
fields transformers 4.x needs, the adapter's hub id, model cards and the Ollama Modelfile."""

from __future__ import annotations

import hashlib
import json

import pytest
from evaluation.adapter_runs import make_adapter_run

from tunery.export import export_run
from tunery.export.gguf_meta import CHECK_TEXT_SHA256, LLAMA_CPP_CHECK_TEXT, pre_tokenizer_name
from tunery.export.ollama import modelfile_text
from tunery.models.card import model_card, point_adapter_at_hub
from tunery.models.portable import base_hub_id, make_folder_portable, portable_config


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    run = make_adapter_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "eco")
    info = json.loads((run / "run.json").read_text())
    info["lineage"].update(dataset_version="sha256:abc123", seed=7)
    info["metrics"] = {"train_loss": 1.234567, "val_loss": 1.5}
    (run / "run.json").write_text(json.dumps(info))
    return run


def gguf_fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {key: (field.contents() if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                  "tokenizer.ggml.token_type") else len(field.data))
            for key, field in reader.fields.items()}


def test_check_text_is_llama_cpps():
    assert hashlib.sha256(LLAMA_CPP_CHECK_TEXT.encode()).hexdigest() == CHECK_TEXT_SHA256


def test_gguf_keys_follow_llama_cpps_converter(run_dir, tmp_path):
    result = export_run(run_dir, "gguf", tmp_path / "gguf", dtype="f32", ollama=True)
    fields = gguf_fields(result.path)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # a plain byte-level splitter: llama.cpp's gpt-2 rule
    assert fields["general.type"] == "model" and fields["general.name"]
    assert fields["general.size_label"].endswith("K")  # the tiny model: tens of thousands of weights
    assert fields["general.license"] == "other"  # a local base without a model card: licence unknown
    assert "tokenizer.ggml.eot_token_id" not in fields  # the converter writes none for ChatML tokenizers
    assert fields["tokenizer.ggml.eos_token_id"] == 2 and fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert "general.quantization_version" in fields


def test_merged_folder_has_the_fields_transformers_4_reads(run_dir, tmp_path):
    export_run(run_dir, "merged", tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    tokenizer_config = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    card = (tmp_path / "merged" / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlibrary_name: transformers\n")
    assert "sha256:abc123" in card and "| train loss | 1.2346 |" in card


def test_adapter_export_keeps_the_local_base_in_tunery_metadata(run_dir, tiny_model_dir, tmp_path):
    export_run(run_dir, "adapter", tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / "tunery-adapter.json").read_text())
    assert record["base_model"] == str(tiny_model_dir) and record["base_model_hub_id"] is None
    assert "library_name: peft" in (tmp_path / "adapter" / "README.md").read_text()


def test_builtin_base_is_named_by_its_hub_id(tmp_path):
    assert base_hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert base_hub_id(str(tmp_path)) is None
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/models/x"}))
    point_adapter_at_hub(tmp_path, "smollm2-135m-instruct")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((tmp_path / "tunery-adapter.json").read_text())["base_model_path"] == "/home/me/models/x"
    card = model_card("adapter", "triage", {"method": "lora", "lineage": {"base_model": "smollm2-135m-instruct"}})
    assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card


def test_portable_config_adds_rope_fields_once(tmp_path):
    config = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}, "dtype": "bfloat16"}
    fixed = portable_config(config)
    assert fixed["rope_theta"] == 5e5 and fixed["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    assert fixed["torch_dtype"] == "bfloat16" and portable_config(fixed) == fixed
    (tmp_path / "config.json").write_text(json.dumps(config))
    make_folder_portable(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == fixed


def test_modelfile_carries_the_templates_default_system_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert pre_tokenizer_name(tokenizer) == "gpt-2"
    assert "SYSTEM" not in modelfile_text("m.gguf", tokenizer)
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Smol.<|im_end|>\n' }}"
                               "{% endif %}" + tokenizer.chat_template)
    text = modelfile_text("m.gguf", tokenizer)
    assert 'SYSTEM """You are Smol."""' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert text.startswith("FROM ./m.gguf\nTEMPLATE")
