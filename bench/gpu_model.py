"""Models for GPU throughput runs: a config with random weights and a real tokenizer.

Throughput only (their answers are noise). `python -m bench.gpu_model OUT_DIR` writes config.json,
bf16 safetensors and the default model's tokenizer and chat template, so `bench.run --model OUT_DIR`
trains it on the helpdesk data like any folder. The default shape is TinyLlama-1.1B's.

`--like DIR` takes the whole shape from DIR's config.json and the tokenizer from DIR: the default
model's own shape with random weights, where its package cannot be installed (a machine with no
package registry; its 94 MB GGUF is too large to carry there). `--save-shape DIR` writes such a
folder (config, tokenizer, chat template, no weights) from a machine that has the default model.
Random weights of the same shape do the same work per step, so the throughput is the model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHAPE_1B = {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
            "num_key_value_heads": 4}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _tokenizer(source: str | Path):
    """A model's tokenizer; a `--save-shape` folder (no weights, so not a model tunery resolves) directly."""
    if Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    from tunery.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(source))


def write_random_model(out: Path, *, tokenizer_from: str | Path = DEFAULT_MODEL, like: Path | None = None,
                       seed: int = 0, **shape) -> Path:
    """A causal LM with random bf16 weights: `like`'s config (else a Llama of `shape`, default SHAPE_1B)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    tokenizer = _tokenizer(like if like is not None else tokenizer_from)
    if like is not None:
        config = AutoConfig.from_pretrained(str(like), trust_remote_code=False)
        for key, value in shape.items():
            setattr(config, key, value)
    else:
        config = LlamaConfig(**{**SHAPE_1B, **shape}, vocab_size=len(tokenizer), max_position_embeddings=2048,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    # Initialised on the GPU where there is one: a 1.1B model's random init takes a minute on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def save_shape(out: Path, model: str = DEFAULT_MODEL) -> Path:
    """`model`'s config and tokenizer, no weights: what `--like` needs on a machine without the model."""
    from transformers import AutoConfig

    from tunery.models import resolve_model

    resolved = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(str(resolved.path), trust_remote_code=False).save_pretrained(out)
    _tokenizer(model).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=None,
                        help=f"decoder layers (default: {SHAPE_1B['num_hidden_layers']}, or --like's)")
    parser.add_argument("--like", type=Path, default=None,
                        help="take the shape and tokenizer from this folder (config.json + tokenizer files)")
    parser.add_argument("--tokenizer-from", default=DEFAULT_MODEL,
                        help="model whose tokenizer the SHAPE_1B model gets (a folder works too)")
    parser.add_argument("--save-shape", action="store_true",
                        help="write the default model's config and tokenizer (no weights) to OUT instead")
    args = parser.parse_args()
    if args.save_shape:
        print(f"wrote the shape of {DEFAULT_MODEL} to {save_shape(args.out)}")
        return
    if args.like is not None and not (args.like / "config.json").is_file():
        raise SystemExit(f"--like {args.like}: no config.json there (write one with --save-shape)")
    shape = {} if args.layers is None else {"num_hidden_layers": args.layers}
    path = write_random_model(args.out, tokenizer_from=args.tokenizer_from, like=args.like, **shape)
    print(f"wrote a random-weight model to {path}")


if __name__ == "__main__":
    main()
