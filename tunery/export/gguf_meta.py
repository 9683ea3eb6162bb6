"""GGUF metadata as llama.cpp's own converter names it: the pre-tokenizer, special tokens, licence and size.

llama.cpp picks a pre-tokenizer by hashing the token ids its check text encodes to; the same text
and hashes are used here, so a file tunery writes carries the name llama.cpp's converter would
write for the same tokenizer. Special tokens and model-card fields go through gguf-py's own readers
(`SpecialVocab`, `Metadata`) over a staging folder. Tensors are not this module's business.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunery.errors import ExportError

# The check text of llama.cpp's converter (convert_hf_to_gguf.py, get_vocab_base_pre): spaces,
# newlines, emoji, digit runs, several scripts and English contractions, where pre-tokenizers differ.
LLAMA_CPP_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001F680 (normal) \U0001F636\u200d\U0001F32B\ufe0f (multiple emojis concatenated) \u2705 "
    "\U0001F999\U0001F999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001F601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256 of str(token ids of the check text) -> llama.cpp pre-tokenizer name, for the byte-level
# BPE tokenizers of the llama-architecture models tunery exports.
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",      # GPT-2
}
CHECK_TEXT_SHA256 = "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"


def check_text_hash(tokenizer) -> str:
    """The hash llama.cpp's converter computes for `tokenizer` (no special tokens added around the text)."""
    ids = tokenizer.encode(LLAMA_CPP_CHECK_TEXT)
    return hashlib.sha256(str(ids).encode()).hexdigest()


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for `tokenizer`, or ExportError when llama.cpp has none for it.

    A tokenizer llama.cpp's converter does not list by hash is accepted when its pre-tokenizer is
    plain GPT-2 byte-level splitting (llama.cpp's `gpt-2`), the one rule that name stands for.
    """
    known = KNOWN_PRE_TOKENIZERS.get(check_text_hash(tokenizer))
    if known:
        return known
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not backend.get("normalizer"):
        return "gpt-2"
    raise ExportError("llama.cpp has no pre-tokenizer matching this tokenizer's splitting rules",
                      code="gguf_unsupported",
                      hint="use --format merged, then llama.cpp's convert_hf_to_gguf.py (it lists the "
                      "tokenizers llama.cpp supports)")


def stage_folder(model, tokenizer, folder: Path, card: str) -> Path:
    """Write what gguf-py's readers look at (config, tokenizer files, model card) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def write_general_metadata(writer, staged: Path, name: str) -> None:
    """general.* keys (name, size label, licence, base model) as llama.cpp's converter derives them."""
    import gguf

    total, shared, expert, count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, staged, name, total)
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, count)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def write_special_vocab(writer, staged: Path, tokenizer, vocab_size: int) -> None:
    """Merges, special token ids, add-BOS/EOS and the chat template, read as llama.cpp's converter reads them."""
    import gguf

    special = gguf.SpecialVocab(staged, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ExportError("the tokenizer has no BPE merges to write", code="gguf_unsupported",
                          hint="use --format merged")
    if "bos" not in special.add_special_token:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        special.add_special_token["bos"] = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    special.add_to_gguf(writer, quiet=True)
