"""Tokenized datasets: conversations to token ids and labels, with a cache under `cache_dir()`.

The cache key is (dataset version, tokenizer, chat template, max_seq_len, too_long policy, encoding
code); entries are safetensors (ids) plus JSON (locations, metadata), never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tunery.data.problems import ProblemLog, summarise_problems
from tunery.data.splits import dataset_version
from tunery.data.template import IGNORE_INDEX, encode_conversation
from tunery.errors import DataError
from tunery.paths import cache_dir
from tunery.types import Conversation, Location, TokenizedExample

TooLong = Literal["truncate", "drop", "error"]
CACHE_FORMAT = 1
_CODE_FILES = ("template.py", "tokenized.py")


def chunk_token_ids(ids: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Overlap-free windows of at most `max_seq_len` tokens; a 1-token tail predicts nothing and is dropped."""
    if max_seq_len < 2:
        raise DataError(f"max_seq_len must be at least 2, got {max_seq_len}", code="invalid_max_seq_len")
    chunks = [list(ids[i:i + max_seq_len]) for i in range(0, len(ids), max_seq_len)]
    return [c for c in chunks if len(c) >= 2]


def tokenizer_hash(tokenizer) -> str:
    """sha256 of what decides token ids: the vocabulary and merges, special tokens, and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [vocab, json.dumps(sorted(map(str, tokenizer.all_special_tokens))),
             str(getattr(tokenizer, "chat_template", "") or "")]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def tokenize_dataset(conversations: Sequence[Conversation], tokenizer, max_seq_len: int, *,
                     too_long: TooLong = "truncate", use_cache: bool = True) -> tuple[list[TokenizedExample], dict]:
    """Token ids and labels for every example, and an info dict (counts, `cached`: whether the cache served it).

    Chat examples longer than `max_seq_len` are truncated, dropped, or raise (listing each with its
    token count), as `too_long` says; text documents are cut into overlap-free windows. Examples left
    with no trained token are dropped and counted.
    """
    if too_long not in ("truncate", "drop", "error"):
        raise DataError(f"too_long must be truncate, drop or error, got {too_long!r}", code="invalid_too_long")
    version = dataset_version(conversations)
    key = _cache_key(version, tokenizer, max_seq_len, too_long)
    folder = cache_dir() / "tokenized" / key[:40]
    if use_cache:
        cached = _load_cache(folder, key)
        if cached is not None:
            examples, info = cached
            return examples, {**info, "cached": True, "cache_path": str(folder)}
    examples, info = _tokenize(conversations, tokenizer, max_seq_len, too_long)
    info.update(dataset_version=version, cache_key=key)
    if use_cache:
        _save_cache(folder, key, examples, info)
    return examples, {**info, "cached": False, "cache_path": str(folder) if use_cache else None}


def _tokenize(conversations, tokenizer, max_seq_len, too_long) -> tuple[list[TokenizedExample], dict]:
    examples: list[TokenizedExample] = []
    info = {"num_input_examples": len(conversations), "num_truncated": 0, "num_dropped_too_long": 0,
            "num_dropped_untrained": 0, "num_text_chunks": 0}
    log = ProblemLog()
    for conv in conversations:
        full = encode_preference(tokenizer, conv) if conv.kind == "preference" else encode_conversation(tokenizer, conv)
        if conv.kind == "text":
            for index, chunk in enumerate(chunk_token_ids(full.input_ids, max_seq_len)):
                examples.append(TokenizedExample(chunk, list(chunk), conv.location, {"chunk": index}))
                info["num_text_chunks"] += 1
            continue
        length = max(len(full.input_ids), len(full.meta.get("rejected_input_ids", ())))
        if length > max_seq_len:
            where = {"file": conv.location.file, "line": conv.location.line} if conv.location else {}
            if too_long == "error":
                log.error("too_long", f"{length} tokens > max_seq_len {max_seq_len}", **where)
                continue
            if too_long == "drop":
                info["num_dropped_too_long"] += 1
                continue
            full.input_ids, full.labels = full.input_ids[:max_seq_len], full.labels[:max_seq_len]
            for key in ("rejected_input_ids", "rejected_labels"):
                if key in full.meta:
                    full.meta[key] = full.meta[key][:max_seq_len]
            full.meta["truncated"] = True
            info["num_truncated"] += 1
        if full.num_trained == 0 or ("rejected_labels" in full.meta
                                     and all(x == IGNORE_INDEX for x in full.meta["rejected_labels"])):
            info["num_dropped_untrained"] += 1
            continue
        examples.append(full)
    if log.errors:
        raise DataError(f"{len(log.errors)} example(s) exceed max_seq_len {max_seq_len}:\n"
                        f"{summarise_problems(log.errors)}", code="too_long",
                        hint="raise max_seq_len, or set too_long to truncate or drop", problems=log.problems)
    info["num_examples"] = len(examples)
    info["num_tokens"] = sum(len(e.input_ids) for e in examples)
    info["num_trained_tokens"] = sum(e.num_trained for e in examples)
    return examples, info


def encode_preference(tokenizer, conv: Conversation) -> TokenizedExample:
    """The preferred side as the example; the other side's ids and labels ride in its meta."""
    chosen, rejected = conv.preference_sides()
    example = encode_conversation(tokenizer, chosen)
    other = encode_conversation(tokenizer, rejected)
    example.meta.update(rejected_input_ids=other.input_ids, rejected_labels=other.labels)
    return example


def _cache_key(version: str, tokenizer, max_seq_len: int, too_long: str) -> str:
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in _CODE_FILES)).hexdigest()
    parts = {"format": CACHE_FORMAT, "dataset": version, "tokenizer": tokenizer_hash(tokenizer),
             "max_seq_len": max_seq_len, "too_long": too_long, "code": code}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _save_cache(folder: Path, key: str, examples: list[TokenizedExample], info: dict) -> None:
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    lengths = [len(e.input_ids) for e in examples]
    tensors: dict[str, np.ndarray] = {
        "input_ids": np.array([t for e in examples for t in e.input_ids], dtype=np.int32),
        "labels": np.array([t for e in examples for t in e.labels], dtype=np.int32),
        "offsets": np.cumsum([0, *lengths], dtype=np.int64),
    }
    rows = [{"file": e.location.file if e.location else None, "line": e.location.line if e.location else None,
             "meta": e.meta} for e in examples]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / "tokens.safetensors"))
        # meta.json is written last: its presence marks a complete entry.
        (tmp / "meta.json").write_text(json.dumps({"key": key, "info": info, "examples": rows}))
        os.replace(tmp, folder)
    except (OSError, SafetensorError):  # another process won the race, or the disk is full
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(folder: Path, key: str) -> tuple[list[TokenizedExample], dict] | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tensors = load_file(str(folder / "tokens.safetensors"))
        ids, labels = tensors["input_ids"].tolist(), tensors["labels"].tolist()
        offsets = tensors["offsets"].tolist()
        if meta["key"] != key or len(offsets) != len(meta["examples"]) + 1 or offsets[-1] != len(ids):
            raise ValueError("cache entry does not match its key")
        examples = []
        for index, row in enumerate(meta["examples"]):
            start, end = offsets[index], offsets[index + 1]
            location = Location(row["file"], row["line"]) if row["file"] is not None else None
            examples.append(TokenizedExample(ids[start:end], labels[start:end], location, row["meta"]))
        return examples, meta["info"]
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        shutil.rmtree(folder, ignore_errors=True)  # a damaged entry: drop it and tokenize again
        return None
