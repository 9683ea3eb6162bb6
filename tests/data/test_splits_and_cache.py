"""Splits, dataset versions, text chunking and the tokenized-dataset cache (with the tiny model's tokenizer)."""

from __future__ import annotations

import random

import pytest
from data.dataset_files import chat_lines, write_lines

from tunery.data import (
    chunk_token_ids,
    dataset_version,
    load_dataset,
    split_dataset,
    tokenize_dataset,
    tokenizer_hash,
)
from tunery.data.template import encode_conversation
from tunery.errors import DataError
from tunery.types import Conversation, Location, Turn


def _convs(n: int, start: int = 0) -> list[Conversation]:
    return [Conversation((Turn("user", f"question {i}"), Turn("assistant", f"answer {i}", True)),
                         location=Location("d.jsonl", i + 1)) for i in range(start, start + n)]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_split_is_deterministic_by_seed_and_independent_of_order():
    convs = _convs(100)
    train, valid = split_dataset(convs, validation_fraction=0.2, seed=7)
    assert (len(train), len(valid)) == (80, 20)
    shuffled = convs[:]
    random.Random(0).shuffle(shuffled)
    train2, valid2 = split_dataset(shuffled, validation_fraction=0.2, seed=7)
    assert {c.turns for c in valid2} == {c.turns for c in valid}
    assert [c.turns for c in train] == [c.turns for c in convs if c not in valid]  # input order kept
    _, other = split_dataset(convs, validation_fraction=0.2, seed=8)
    assert {c.turns for c in other} != {c.turns for c in valid}


def test_split_keeps_duplicates_on_one_side_and_rejects_bad_fractions():
    convs = _convs(20) + _convs(5)  # five examples twice
    train, valid = split_dataset(convs, validation_fraction=0.3, seed=1)
    assert not {c.turns for c in train} & {c.turns for c in valid}
    with pytest.raises(DataError):
        split_dataset(convs, validation_fraction=1.0)
    with pytest.raises(DataError):
        split_dataset(_convs(1))


def test_version_depends_on_content_not_location_or_file_type(tmp_path):
    jsonl = write_lines(tmp_path / "d.jsonl", chat_lines(10))
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,completion\r\n" + "".join(f'{r["prompt"]},"{r["completion"]}"\r\n' for r in rows))
    version = dataset_version(load_dataset(jsonl))
    assert version == dataset_version(load_dataset(csv_path)) == dataset_version(load_dataset(jsonl))
    assert len(version) == 64 and int(version, 16) >= 0
    assert dataset_version(load_dataset(write_lines(tmp_path / "e.jsonl", chat_lines(10)))) == version
    edited = chat_lines(10)
    edited[3] = edited[3].replace("answer 3", "answer three")
    assert dataset_version(load_dataset(write_lines(tmp_path / "f.jsonl", edited))) != version
    assert dataset_version(list(reversed(load_dataset(jsonl)))) != version


def test_chunk_token_ids_is_overlap_free_and_complete():
    ids = list(range(25))
    chunks = chunk_token_ids(ids, 8)
    assert chunks == [ids[0:8], ids[8:16], ids[16:24]]  # the 1-token tail predicts nothing
    assert chunk_token_ids(list(range(26)), 8)[-1] == [24, 25]
    with pytest.raises(DataError):
        chunk_token_ids(ids, 1)


def test_tokenize_dataset_caches_and_says_so(tiny_tokenizer, tunery_home):
    convs = _convs(12)
    first, info = tokenize_dataset(convs, tiny_tokenizer, 64)
    assert info["cached"] is False and info["num_examples"] == 12
    assert first[0].input_ids == encode_conversation(tiny_tokenizer, convs[0]).input_ids
    second, info2 = tokenize_dataset(convs, tiny_tokenizer, 64)
    assert info2["cached"] is True and info2["cache_path"].startswith(str(tunery_home / "cache"))
    assert [(e.input_ids, e.labels, e.location) for e in second] == [(e.input_ids, e.labels, e.location) for e in first]
    assert not list((tunery_home / "cache").rglob("*.pkl")) and list((tunery_home / "cache").rglob("*.safetensors"))
    # Any part of the key changing means a fresh tokenization.
    assert tokenize_dataset(convs, tiny_tokenizer, 32)[1]["cached"] is False
    assert tokenize_dataset(convs[:-1], tiny_tokenizer, 64)[1]["cached"] is False
    tiny_tokenizer_copy = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    tiny_tokenizer_copy.chat_template = tiny_tokenizer.chat_template.replace("'\n'", "'\n\n'")
    assert tokenizer_hash(tiny_tokenizer_copy) != tokenizer_hash(tiny_tokenizer)
    assert tokenize_dataset(convs, tiny_tokenizer_copy, 64)[1]["cached"] is False


def test_damaged_cache_entry_is_rebuilt(tiny_tokenizer):
    convs = _convs(10)
    _, info = tokenize_dataset(convs, tiny_tokenizer, 64)
    from pathlib import Path

    (Path(info["cache_path"]) / "tokens.safetensors").write_bytes(b"garbage")
    examples, info2 = tokenize_dataset(convs, tiny_tokenizer, 64)
    assert info2["cached"] is False and len(examples) == 10


def test_too_long_policies(tiny_tokenizer):
    long_conv = Conversation((Turn("user", "word " * 200), Turn("assistant", "short", True)), location=Location("d", 3))
    convs = [*_convs(3), long_conv]
    full_len = len(encode_conversation(tiny_tokenizer, long_conv).input_ids)
    with pytest.raises(DataError) as info:
        tokenize_dataset(convs, tiny_tokenizer, 64, too_long="error")
    assert info.value.problems[0].line == 3 and f"{full_len} tokens" in info.value.problems[0].message
    dropped, dinfo = tokenize_dataset(convs, tiny_tokenizer, 64, too_long="drop")
    assert len(dropped) == 3 and dinfo["num_dropped_too_long"] == 1
    # Truncation cuts the assistant turn away, so nothing would train: dropped and counted.
    truncated, tinfo = tokenize_dataset(convs, tiny_tokenizer, 64, too_long="truncate")
    assert len(truncated) == 3 and tinfo["num_truncated"] == 1 and tinfo["num_dropped_untrained"] == 1
    answer_first = Conversation((Turn("user", "q"), Turn("assistant", "word " * 200, True)))
    kept, _ = tokenize_dataset([answer_first], tiny_tokenizer, 64, too_long="truncate")
    assert len(kept[0].input_ids) == 64 and kept[0].meta["truncated"] and kept[0].num_trained > 0


def test_text_documents_are_chunked_to_max_seq_len(tiny_tokenizer):
    doc = Conversation((Turn("assistant", "The printer is offline. " * 40, True),), "text", Location("doc.txt", 1))
    ids = encode_conversation(tiny_tokenizer, doc).input_ids
    examples, info = tokenize_dataset([doc], tiny_tokenizer, 50)
    assert info["num_text_chunks"] == len(examples) == -(-len(ids) // 50) - (len(ids) % 50 == 1)
    assert [t for e in examples for t in e.input_ids] == ids[:sum(len(e.input_ids) for e in examples)]
    assert all(e.labels == e.input_ids and len(e.input_ids) <= 50 for e in examples)
