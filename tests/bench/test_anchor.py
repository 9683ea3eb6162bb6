"""The llama.cpp anchor's own pieces on the tiny model: the benchmark adapters written for both engines,
its --help, and the message when llama-cpp-python is missing. No timing, no llama.cpp needed.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.adapters import make_adapters, random_lora
from bench.anchor import check_llama_python, parse_args
from tunery.export.gguf_file import permute_for_llama_cpp
from tunery.inference.lora import AdapterSlots, read_peft_adapter


def test_adapters_are_the_same_weights_in_peft_and_gguf(tiny_model_dir, tmp_path):
    import gguf

    config = AutoConfig.from_pretrained(tiny_model_dir)
    adapters = make_adapters(config, tmp_path, 2, rank=4, alpha=16.0, b_std=0.02, seed=3)
    weights = random_lora(config, 4, 3, 0.02)  # adapter 0: seed 3
    peft = read_peft_adapter(adapters[0].peft_dir)
    assert len(peft.modules) == 2 * 7
    lora_a, lora_b, scale = peft.modules["model.layers.1.self_attn.q_proj"]
    assert scale == 4.0
    assert torch.equal(lora_a, weights["model.layers.1.self_attn.q_proj"][0])

    reader = gguf.GGUFReader(str(adapters[0].gguf_path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert (fields["general.architecture"], fields["general.type"], fields["adapter.type"]) == \
        ("llama", "adapter", "lora")
    assert fields["adapter.lora.alpha"] == 16.0
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * 7 * 2
    # llama.cpp's q and k rows are interleaved per rotary pair (4 heads, 2 key/value heads here): B follows
    q_a, q_b = weights["model.layers.1.self_attn.q_proj"]
    k_b, v_b = weights["model.layers.1.self_attn.k_proj"][1], weights["model.layers.1.self_attn.v_proj"][1]
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight.lora_a"], q_a.numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight.lora_b"], permute_for_llama_cpp(q_b.numpy(), 4))
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight.lora_b"], permute_for_llama_cpp(k_b.numpy(), 2))
    assert not np.array_equal(tensors["blk.1.attn_k.weight.lora_b"], k_b.numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight.lora_b"], v_b.numpy())
    assert tensors["blk.0.ffn_down.weight.lora_a"].shape == (4, config.intermediate_size)

    # tunery installs both adapters on the model they were made for, and they answer differently
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    slots = AdapterSlots(model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        logits = []
        for adapter in adapters:
            slot = slots.install(read_peft_adapter(adapter.peft_dir))
            slots.routing.groups = [(slot, None)]
            logits.append(model(ids).logits)
    assert not torch.allclose(logits[0], logits[1])


def test_help_names_the_clients_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--clients" in capsys.readouterr().out


def test_missing_llama_cpp_python_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"cannot run .*make \.venv-ecosystem/\.installed"):
        check_llama_python(str(tmp_path / "no-python"))
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed in this environment")
    with pytest.raises(SystemExit, match=r"llama-cpp-python is missing in --llama-python"):
        check_llama_python(sys.executable)
