"""A larger model for GPU throughput runs: a Llama config with random weights and a real tokenizer.

Throughput only (its answers are noise): `python -m bench.gpu_model OUT_DIR` writes config.json,
bf16 safetensors and the default model's tokenizer and chat template, so `bench.run --model OUT_DIR`
trains it on the helpdesk data like any folder. The default shape is TinyLlama-1.1B's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHAPE_1B = {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
            "num_key_value_heads": 4}


def write_random_model(out: Path, *, tokenizer_from: str = "smollm2-135m-instruct", seed: int = 0,
                       **shape) -> Path:
    """A LlamaForCausalLM of `shape` (default SHAPE_1B) with random bf16 weights and `tokenizer_from`'s tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunery.models import load_tokenizer, resolve_model

    source = resolve_model(tokenizer_from)
    tokenizer = load_tokenizer(source)
    config = LlamaConfig(**{**SHAPE_1B, **shape}, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=SHAPE_1B["num_hidden_layers"])
    args = parser.parse_args()
    path = write_random_model(args.out, num_hidden_layers=args.layers)
    print(f"wrote a random-weight model to {path}")


if __name__ == "__main__":
    main()
