"""Seeded random LoRA adapters for the serving anchor: the same weights written twice, as a PEFT folder
(what tunery serves) and as a GGUF LoRA file (what llama.cpp loads with `llama_adapter_lora_init`).

Every decoder projection of a llama-family model (q, k, v, o, gate, up, down), A drawn as PEFT
initialises it and B drawn at random instead of zero, so each adapter changes the model's answers.
Knows the two file formats; nothing of either engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tunery.export.gguf_file import permute_for_llama_cpp
from tunery.inference.fastlane import PROJECTIONS
from tunery.inference.lora import PEFT_PREFIX


@dataclass(frozen=True)
class BenchAdapter:
    name: str
    peft_dir: Path  # adapter_config.json + adapter_model.safetensors
    gguf_path: Path  # llama.cpp's LoRA adapter file


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each decoder projection of a llama-family `config`, by its short name."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads * head_dim
    kv = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    return {"q_proj": (hidden, heads), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (heads, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def random_lora(config, rank: int, seed: int, b_std: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name (as in the transformers model) -> (A [rank, in], B [out, rank]), fp32."""
    generator = torch.Generator().manual_seed(seed)
    shapes = projection_shapes(config)
    weights = {}
    for layer in range(config.num_hidden_layers):
        for part, proj in PROJECTIONS:
            fan_in, fan_out = shapes[proj]
            bound = 1 / fan_in**0.5  # PEFT's kaiming_uniform_(a=sqrt(5)) bound for A
            lora_a = (torch.rand(rank, fan_in, generator=generator) * 2 - 1) * bound
            lora_b = torch.randn(fan_out, rank, generator=generator) * b_std
            weights[f"model.layers.{layer}.{part}.{proj}"] = (lora_a, lora_b)
    return weights


def write_peft(folder: Path, weights, rank: int, alpha: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (lora_a, lora_b) in weights.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted({proj for _, proj in PROJECTIONS}), "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_gguf_lora(path: Path, config, weights, alpha: float) -> None:
    """llama.cpp's LoRA GGUF, as its convert_lora_to_gguf.py writes it: `blk.N.attn_q.weight.lora_a` and
    `.lora_b` in f32, q and k rows of B interleaved per rotary pair like the base's weights."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, (lora_a, lora_b) in weights.items():
        base = name_map.get_name(f"{name}.weight", try_suffixes=(".weight",))
        b = lora_b.numpy()
        if base.endswith("attn_q.weight"):
            b = permute_for_llama_cpp(b, n_head)
        elif base.endswith("attn_k.weight"):
            b = permute_for_llama_cpp(b, n_kv)
        writer.add_tensor(f"{base}.lora_a", np.ascontiguousarray(lora_a.numpy(), dtype=np.float32))
        writer.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_adapters(config, folder: Path, count: int, *, rank: int = 8, alpha: float = 16.0,
                  b_std: float = 0.04, seed: int = 0) -> list[BenchAdapter]:
    """`count` adapters under `folder`, adapter i drawn from seed `seed + i`."""
    adapters = []
    for i in range(count):
        name = f"bench-{i}"
        weights = random_lora(config, rank, seed + i, b_std)
        adapter = BenchAdapter(name=name, peft_dir=folder / name, gguf_path=folder / f"{name}.gguf")
        write_peft(adapter.peft_dir, weights, rank, alpha)
        write_gguf_lora(adapter.gguf_path, config, weights, alpha)
        adapters.append(adapter)
    return adapters
