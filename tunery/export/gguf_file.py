"""GGUF export of llama-family models with the `gguf` package: weights (f32/f16/bf16/q8_0), the
byte-level BPE tokenizer and the chat template as llama.cpp expects them; optional Ollama Modelfile
(`ollama.py`).

Only what this module writes is known to reload; other architectures and tokenizers are refused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tunery.errors import ExportError
from tunery.export.gguf_meta import (
    pre_tokenizer_name,
    stage_folder,
    write_general_metadata,
    write_special_vocab,
)
from tunery.export.ollama import modelfile_text
from tunery.models.load import LOCAL_ONLY

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_FAMILY = {"llama"}


def check_gguf_support(model, tokenizer) -> None:
    """Refuse, before writing anything, what this writer cannot convert faithfully."""
    config = model.config
    if config.model_type not in LLAMA_FAMILY:
        raise ExportError(f"GGUF export supports llama-family models; this model is {config.model_type!r}",
                          code="gguf_unsupported",
                          hint="use --format merged, then llama.cpp's convert_hf_to_gguf.py on that folder")
    rope = getattr(config, "rope_scaling", None) or {}
    if rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
        raise ExportError(f"GGUF export does not handle rope scaling {rope!r}", code="gguf_unsupported",
                          hint="use --format merged and llama.cpp's converter")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("decoder")):
        raise ExportError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only",
                          code="gguf_unsupported", hint="use --format merged")


def permute_for_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes this."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def quantize_tensor(data: np.ndarray, gguf_type: str):
    """`(array, GGMLQuantizationType)` for one tensor; 1-D tensors and odd shapes stay wider."""
    import gguf

    qtype = gguf.GGMLQuantizationType
    if data.ndim == 1 or gguf_type == "f32":
        return data.astype(np.float32), qtype.F32
    if gguf_type == "f16":
        return data.astype(np.float16), qtype.F16
    if gguf_type == "bf16":
        return gguf.quants.quantize(data.astype(np.float32), qtype.BF16), qtype.BF16
    if data.shape[-1] % 32 != 0:  # q8_0 works on blocks of 32; llama.cpp falls back to f16 too
        return data.astype(np.float16), qtype.F16
    return gguf.quants.quantize(data.astype(np.float32), qtype.Q8_0), qtype.Q8_0


def write_gguf(model, tokenizer, path: Path, gguf_type: str, name: str, card: str = "") -> None:
    """Write the (merged, fp32) llama model and its tokenizer into one GGUF file.

    Keys and values follow llama.cpp's convert_hf_to_gguf.py for the same model: the same general.*
    fields from the model card, the pre-tokenizer llama.cpp names, special tokens as gguf-py reads them.
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"GGUF dtype must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}",
                          code="invalid_dtype")
    check_gguf_support(model, tokenizer)
    pre = pre_tokenizer_name(tokenizer)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    add_tensors(writer, model, gguf_type)
    with tempfile.TemporaryDirectory(prefix=".gguf-stage-", dir=path.parent) as stage:
        staged = stage_folder(model, tokenizer, Path(stage), card)
        write_general_metadata(writer, staged, name)
        write_model_metadata(writer, config, gguf_type)
        write_token_list(writer, tokenizer, config.vocab_size, pre)
        write_special_vocab(writer, staged, tokenizer, max(config.vocab_size, len(tokenizer)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_tensors(writer, model, gguf_type: str) -> None:
    """Every weight under llama.cpp's tensor name, q/k permuted, in `gguf_type`."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a GGUF without output.weight is read back as tied
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            if "rotary_emb" in hf_name:
                continue
            raise ExportError(f"no GGUF name for tensor {hf_name}", code="gguf_unsupported")
        data = tensor.detach().float().cpu().numpy()
        if gguf_name.endswith("attn_q.weight"):
            data = permute_for_llama_cpp(data, n_head)
        elif gguf_name.endswith("attn_k.weight"):
            data = permute_for_llama_cpp(data, n_kv)
        array, qtype = quantize_tensor(data, gguf_type)
        writer.add_tensor(gguf_name, array, raw_dtype=qtype)


def write_model_metadata(writer, config, gguf_type: str) -> None:
    import gguf

    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope_theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(int(file_types[gguf_type]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)


def write_token_list(writer, tokenizer, vocab_size: int, pre: str) -> None:
    """Tokens in id order with their types (control, user-defined, normal, unused padding)."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for index in range(max(vocab_size, len(vocab))):
        if index in by_id:
            tokens.append(by_id[index])
            special = index in added and getattr(added[index], "special", False)
            user_defined = index in added and not special
            types.append(gguf.TokenType.CONTROL if special else
                         gguf.TokenType.USER_DEFINED if user_defined else gguf.TokenType.NORMAL)
        else:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def reload_gguf(path: Path):
    """The GGUF read back through transformers' GGUF loader (de-quantised), computing in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 **LOCAL_ONLY)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def write_modelfile(folder: Path, gguf_name: str, tokenizer) -> Path:
    """The Modelfile next to the GGUF (`ollama.py`: its TEMPLATE renders as the chat template does)."""
    path = folder / "Modelfile"
    path.write_text(modelfile_text(gguf_name, tokenizer), encoding="utf-8")
    return path
