"""Document indexes: every reader, citations, --update, versioned manifests, and each bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from tunery.errors import ConfigError, DataError, RetrievalError
from tunery.rag import build_index, open_index
from tunery.rag.index import DEFAULT_MODEL  # noqa: F401  (the CLI default, documented)
from tunery.rag.prompt import Retriever, fit_prompt


def make_docs(root: Path, write_pdf) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "notes.txt").write_text("Intro line.\n\nThe Osprey switch fan is part KX-1111-A.\n\n"
                                    "Closing remark about nothing.\n", encoding="utf-8")
    (docs / "sub" / "guide.md").write_text("# Guide\n\nRoom B2.40 hosts the optics lab in Lyon.\n", encoding="utf-8")
    (docs / "page.html").write_text("<html><head><style>p{color:red}</style><script>var secret=1;</script></head>"
                                    "<body><h1>Owners</h1><p>The badge registry in Porto is owned by Elif Varga.</p>"
                                    "</body></html>", encoding="utf-8")
    (docs / "rows.jsonl").write_text(json.dumps({"text": "QRV stands for Quarterly Routing Vendor."}) + "\n"
                                     + json.dumps({"title": "no text field"}) + "\n", encoding="utf-8")
    write_pdf(docs / "manual.pdf", [["Nothing relevant on page one."], ["The Merlin NAS rail kit is part VB-2222-C."]])
    (docs / "image.bin").write_bytes(bytes(range(256)))
    (docs / "binary.txt").write_bytes(b"GIF89a\x00\x01\x02")
    (docs / "latin1.md").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / ".hidden.txt").write_text("never indexed", encoding="utf-8")
    return docs


def test_index_reads_every_type_cites_sources_and_skips_bad_files(tmp_path, tiny_model_dir, make_pdf):
    docs = make_docs(tmp_path, make_pdf)
    warnings: list[str] = []
    report = build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=48, overlap_tokens=8,
                         warn=warnings.append)
    assert report.sources == 5 and report.retrievers == ["bm25"]
    text = "\n".join(warnings)
    for name in ("image.bin", "binary.txt", "latin1.md"):
        assert name in text, text
    assert "rows.jsonl:2" in text and "hidden" not in text
    index = open_index(tmp_path / "idx")
    by_source = {hit.source: hit for hit in index.search("Osprey switch fan part", k=3)}
    hit = by_source["docs/notes.txt"]
    assert hit.rank == 1 and hit.chunk["line"] <= 3 <= hit.chunk["end_line"]
    raw = (docs / "notes.txt").read_text(encoding="utf-8")
    assert raw[hit.chunk["start"]:hit.chunk["end"]] == hit.text
    pdf_hit = index.search("Merlin NAS rail kit", k=1)[0]
    assert pdf_hit.source == "docs/manual.pdf" and pdf_hit.chunk["page"] == 2 and "VB-2222-C" in pdf_hit.text
    html_hit = index.search("badge registry Porto owner", k=1)[0]
    assert html_hit.source == "docs/page.html" and "Elif Varga" in html_hit.text and "secret" not in html_hit.text
    assert index.search("Quarterly Routing Vendor", k=1)[0].source == "docs/rows.jsonl"
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"docs/notes.txt", "docs/sub/guide.md", "docs/page.html", "docs/rows.jsonl",
                                        "docs/manual.pdf"}
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"].values())
    assert manifest["libraries"]["bm25s"] and manifest["settings"]["tokenizer_sha256"]


def test_chunks_respect_the_token_budget_and_overlap(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    sentences = [f"Widget {i} is red." for i in range(60)]
    (tmp_path / "long.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")
    build_index([tmp_path / "long.txt"], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=64,
                overlap_tokens=20)
    chunks = open_index(tmp_path / "idx").chunks
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(tokenizer(chunk["text"], add_special_tokens=False)["input_ids"]) <= 64 + 4
        assert chunk["text"].endswith(".")  # cut at sentence ends
    shared = sum(1 for a, b in zip(chunks, chunks[1:]) if b["start"] < a["end"])
    assert shared == len(chunks) - 1  # every chunk starts with the last sentence(s) of the one before


def test_update_reindexes_changed_files_only(tmp_path, tiny_model_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in {"a.txt": "Alpha fact one.", "b.txt": "Bravo fact two.", "c.txt": "Charlie fact three."}.items():
        (docs / name).write_text(text, encoding="utf-8")
    out = tmp_path / "idx"
    build_index([docs], out, model=str(tiny_model_dir))
    with pytest.raises(ConfigError) as refused:
        build_index([docs], out, model=str(tiny_model_dir))
    assert refused.value.code == "output_exists"
    (docs / "b.txt").write_text("Bravo now says zebra.", encoding="utf-8")
    (docs / "c.txt").unlink()
    (docs / "d.txt").write_text("Delta is new.", encoding="utf-8")
    report = build_index([docs], out, model=str(tiny_model_dir), update=True)
    assert (report.reused_sources, report.rechunked_sources, report.removed_sources) == (1, 2, 1)
    index = open_index(out)
    assert index.search("zebra", k=1)[0].source == "docs/b.txt"
    assert index.search("Charlie", k=3) == []
    assert [c["id"] for c in index.chunks] == list(range(len(index.chunks)))
    with pytest.raises(RetrievalError) as changed:
        build_index([docs], out, model=str(tiny_model_dir), chunk_tokens=128, update=True)
    assert "--rebuild" in changed.value.hint


def test_an_index_kept_inside_its_documents_folder_is_not_indexed_again(tmp_path, tiny_model_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Wren printer toner is part MX-3333-D.\n", encoding="utf-8")
    first = build_index([docs], docs / "idx", model=str(tiny_model_dir))
    warnings: list[str] = []
    again = build_index([docs], docs / "idx", model=str(tiny_model_dir), rebuild=True, warn=warnings.append)
    updated = build_index([docs], docs / "idx", model=str(tiny_model_dir), update=True, warn=warnings.append)
    assert first.chunks == again.chunks == updated.chunks == 1 and first.sources == updated.sources == 1
    assert any("idx: skipped: a tunery index" in w for w in warnings), warnings


def test_fitting_thousands_of_chunks_takes_a_handful_of_encodings():
    from tunery.rag.prompt import _fit
    from tunery.rag.retrieval import Hit

    hits = [Hit(rank=i + 1, score=1.0, chunk={"id": i}) for i in range(5000)]  # an index's top_k of 5000
    calls = []

    def build(kept):  # 20 tokens of question and template, 7 per chunk
        calls.append(len(kept))
        return [], [0] * (20 + 7 * len(kept))

    fitted = _fit(build, hits, max_prompt_tokens=1000)
    assert len(fitted.hits) == 140 and fitted.hits == hits[:140] and len(fitted.retrieved) == 5000
    assert len(calls) <= 16, len(calls)
    assert len(_fit(build, hits[:3], max_prompt_tokens=1000).hits) == 3 and calls[-1] == 3  # fits at once
    with pytest.raises(DataError) as too_long:
        _fit(build, hits, max_prompt_tokens=19)
    assert too_long.value.code == "context_length_exceeded" and "20 tokens" in too_long.value.message


def test_empty_folder_and_only_unreadable_files_are_clear_errors(tmp_path, tiny_model_dir, make_pdf):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as empty:
        build_index([tmp_path / "empty"], tmp_path / "idx", model=str(tiny_model_dir))
    assert empty.value.code == "no_documents"
    scans = tmp_path / "scans"
    scans.mkdir()
    make_pdf(scans / "scan.pdf", [None, None])
    warnings: list[str] = []
    with pytest.raises(RetrievalError) as no_text:
        build_index([scans], tmp_path / "idx", model=str(tiny_model_dir), warn=warnings.append)
    assert no_text.value.code == "no_documents"
    assert any("scan.pdf" in w and "no text layer" in w for w in warnings)
    assert not (tmp_path / "idx").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user file", encoding="utf-8")
    with pytest.raises(ConfigError) as not_index:
        build_index([tmp_path / "empty"], tmp_path / "mine", model=str(tiny_model_dir))
    assert not_index.value.code == "output_exists"
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user file"


def test_a_200_mb_file_is_streamed(tmp_path, tiny_model_dir):
    big = tmp_path / "big.txt"
    filler = " " * (1 << 20) + "\n"
    with big.open("w", encoding="utf-8") as handle:
        handle.write("The first paragraph names the Heron router.\n\n")
        for _ in range(200):
            handle.write(filler)
        handle.write("\nThe last paragraph names the Plover gateway.\n")
    assert big.stat().st_size > 200 * 10**6
    from tunery.models import load_tokenizer

    load_tokenizer(str(tiny_model_dir))  # imports settle before measuring
    tracemalloc.start()
    build_index([big], tmp_path / "idx", model=str(tiny_model_dir))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB: the file was not streamed"
    hit = open_index(tmp_path / "idx").search("Plover gateway", k=1)[0]
    assert hit.chunk["line"] == 204
    assert hit.chunk["start"] == len("The first paragraph names the Heron router.\n\n") + 200 * len(filler) + 1


def test_index_from_another_library_version_or_tokenizer_is_refused_with_the_rebuild_command(tmp_path,
                                                                                            tiny_model_dir):
    import shutil

    from transformers import AutoTokenizer

    (tmp_path / "a.txt").write_text("Some text.", encoding="utf-8")
    out = tmp_path / "idx"
    build_index([tmp_path / "a.txt"], out, model=str(tiny_model_dir))
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(RetrievalError) as wrong_tokenizer:
        open_index(out).check_model(AutoTokenizer.from_pretrained(other), str(other))
    assert wrong_tokenizer.value.code == "index_tokenizer"
    assert f"--model {other}" in wrong_tokenizer.value.hint and "--rebuild" in wrong_tokenizer.value.hint
    with pytest.raises(RetrievalError) as from_chat:  # `tunery chat MODEL+rag:INDEX` names the whole reference
        open_index(out).check_model(AutoTokenizer.from_pretrained(other), f"{other}+rag:{out}")
    assert f"--model {other} " in from_chat.value.hint and "+rag:" not in from_chat.value.hint
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["libraries"]["bm25s"] = "0.0.1"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError) as old_library:
        open_index(out)
    assert old_library.value.code == "index_version" and "bm25s 0.0.1" in old_library.value.message
    assert f"tunery rag index {tmp_path / 'a.txt'} --out {out}" in old_library.value.hint


def test_missing_index_is_a_clear_cli_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "tunery", "rag", "search", str(tmp_path / "nope"), "anything"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "does not exist" in message and "tunery rag index" in message
    assert "Traceback" not in done.stderr


def test_search_cli_json(tmp_path, tiny_model_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The Wren printer toner is part MX-3333-D.\n\nUnrelated words.", encoding="utf-8")
    (docs / "fake.pdf").write_bytes(b"%PDF-1.4 [not] really a PDF")
    (docs / "odd [name].txt").write_bytes(b"caf\xe9")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "60"}
    run = [sys.executable, "-m", "tunery", "rag"]
    built = subprocess.run([*run, "index", str(docs), "--out", str(tmp_path / "idx"), "--model",
                            str(tiny_model_dir), "--chunk-tokens", "48", "--overlap-tokens", "0"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert built.returncode == 0, built.stderr
    warnings = built.stderr.splitlines()  # one plain line per warning, naming the file, on a narrow terminal too
    assert any(line.startswith("warning: ") and "odd [name].txt: skipped: not UTF-8" in line  # not read as markup
               for line in warnings), warnings
    assert any(line.startswith("warning: ") and "fake.pdf: skipped: the PDF cannot be read" in line
               for line in warnings), warnings
    assert all(line.startswith("warning: ") for line in warnings if line.strip()), warnings  # pypdf's lines too
    assert "[yellow]" not in built.stderr
    found = subprocess.run([*run, "search", str(tmp_path / "idx"), "Wren printer toner", "-k", "1", "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
    rows = json.loads(found.stdout)
    assert len(rows) == 1 and list(rows[0])[:3] == ["rank", "score", "source"] and "text" in rows[0]
    assert (rows[0]["rank"], rows[0]["source"]) == (1, "docs/a.txt") and "MX-3333-D" in rows[0]["text"]
    assert isinstance(rows[0]["score"], float) and rows[0]["score"] > 0
    huge = subprocess.run([*run, "search", str(tmp_path / "idx"), "Wren", "-k", "1000000000", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert huge.returncode == 0 and len(json.loads(huge.stdout)) == 1, huge.stderr
    for bad_k in ("0", "-3"):
        refused = subprocess.run([*run, "search", str(tmp_path / "idx"), "Wren", "-k", bad_k],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr


def test_prompt_drops_chunks_never_the_question(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tunery.data.template import encode_prompt

    docs = tmp_path / "d.txt"
    docs.write_text("\n\n".join(f"Fact {i}: the gadget {i} weighs {i} kilograms." for i in range(20)), encoding="utf-8")
    build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=40, overlap_tokens=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    retriever = Retriever.open(tmp_path / "idx", k=5)
    question = [{"role": "user", "content": "How much does gadget 17 weigh?"}]
    full = retriever.prompt(question, tokenizer, max_prompt_tokens=4096)
    assert len(full.hits) == 5 and "gadget 17 weighs" in full.hits[0].text
    bare = len(encode_prompt(tokenizer, [{"role": "user", "content": retriever.template.replace(
        "{context}", "").replace("{question}", question[0]["content"])}]))
    tight = retriever.prompt(question, tokenizer, max_prompt_tokens=bare + 100)
    assert 1 <= len(tight.hits) < 5 and len(tight.prompt_ids) <= bare + 100
    assert tight.hits == full.hits[:len(tight.hits)]
    assert tight.messages[-1]["content"].endswith("Question: How much does gadget 17 weigh?")
    long_question = [{"role": "user", "content": "why " * 3000}]
    with pytest.raises(DataError) as too_long:
        fit_prompt(long_question, full.hits, tokenizer, max_prompt_tokens=1024)
    assert too_long.value.code == "context_length_exceeded"


def test_dense_and_hybrid_retrieval_with_an_embedding_model(tmp_path, tiny_model_dir, tiny_embedder):
    import numpy as np

    from tunery.rag.dense import embed_texts

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Alpha bravo charlie.\n\nDelta echo foxtrot.", encoding="utf-8")
    (docs / "b.txt").write_text("Widgets and gadgets weigh kilograms.", encoding="utf-8")
    report = build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=48, overlap_tokens=0,
                         embedding_model=tiny_embedder)
    assert report.retrievers == ["bm25", "dense"]
    index = open_index(tmp_path / "idx")
    assert index.default_mode == "hybrid" and index.vectors.shape[0] == len(index.chunks)
    query = "Widgets and gadgets weigh kilograms."
    for chunk in index.chunks:
        assert np.allclose(index.vectors[chunk["id"]], embed_texts(str(tiny_embedder), [chunk["text"]])[0], atol=1e-5)
    assert index.search(query, k=1, mode="dense")[0].source == "docs/b.txt"
    hybrid = index.search(query, k=3)
    assert hybrid[0].source == "docs/b.txt" and hybrid[0].score > 1 / 61  # ranked by both retrievers
    (docs / "a.txt").write_text("Alpha bravo charlie changed.", encoding="utf-8")
    build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=48, overlap_tokens=0,
                embedding_model=tiny_embedder, update=True)
    updated = open_index(tmp_path / "idx")
    for chunk in updated.chunks:  # kept (b.txt) and new (a.txt) vectors both sit on their chunk's row
        assert np.allclose(updated.vectors[chunk["id"]], embed_texts(str(tiny_embedder), [chunk["text"]])[0],
                           atol=1e-5)
    bm25_only = tmp_path / "bm25-only"
    build_index([docs], bm25_only, model=str(tiny_model_dir))
    with pytest.raises(ConfigError, match="no dense vectors"):
        open_index(bm25_only).search(query, mode="dense")


def test_a_damaged_index_is_a_clear_error_never_a_crash(tmp_path, tiny_model_dir):
    import shutil

    (tmp_path / "a.txt").write_text("The Wren printer toner is part MX-3333-D.", encoding="utf-8")
    good = tmp_path / "good"
    build_index([tmp_path / "a.txt"], good, model=str(tiny_model_dir))

    def damaged(name: str, damage) -> Path:
        folder = shutil.copytree(good, tmp_path / name)
        damage(folder)
        return folder

    cases = {
        "index_corrupt": [damaged("garbage", lambda f: (f / "manifest.json").write_text("{not json", encoding="utf-8")),
                          damaged("no-chunks", lambda f: (f / "chunks.jsonl").unlink()),
                          damaged("no-bm25", lambda f: shutil.rmtree(f / "bm25")),
                          damaged("bad-chunks", lambda f: (f / "chunks.jsonl").write_text("[1]\n{", encoding="utf-8"))],
        "index_version": [damaged("a-list", lambda f: (f / "manifest.json").write_text("[1, 2]", encoding="utf-8")),
                          damaged("no-libraries", lambda f: (f / "manifest.json").write_text(
                              json.dumps({"format": 1, "libraries": "bm25s"}), encoding="utf-8"))],
    }

    def edit_manifest(edit):
        def damage(folder: Path) -> None:
            manifest = json.loads((folder / "manifest.json").read_text())
            edit(manifest)
            (folder / "manifest.json").write_text(json.dumps(manifest))
        return damage

    def chunk_record(**changes):
        def damage(folder: Path) -> None:
            record = json.loads((folder / "chunks.jsonl").read_text())
            record.update(changes)
            (folder / "chunks.jsonl").write_text(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
        return damage

    other = tmp_path / "other"  # an index of another size, whose bm25/ would return rows past the end
    (tmp_path / "b.txt").write_text("\n\n".join(f"Fact {i} about toner." for i in range(30)), encoding="utf-8")
    build_index([tmp_path / "b.txt"], other, model=str(tiny_model_dir), chunk_tokens=8, overlap_tokens=0)
    fields = {  # a hand-edited manifest or chunk file: the field is named, before any search trips over it
        "settings: not an object": edit_manifest(lambda m: m.pop("settings")),
        "settings.tokenizer_sha256": edit_manifest(lambda m: m.__setitem__("settings", {})),
        "settings.bm25": edit_manifest(lambda m: m["settings"].__setitem__("bm25", 3)),
        "settings.top_k: 'abc'": edit_manifest(lambda m: m["settings"].__setitem__("top_k", "abc")),
        "settings.top_k: -2": edit_manifest(lambda m: m["settings"].__setitem__("top_k", -2)),
        "num_chunks": edit_manifest(lambda m: m.__setitem__("num_chunks", "x")),
        "sources": edit_manifest(lambda m: m.__setitem__("sources", [1])),
        "line 1: field 'line'": chunk_record(line=None),
        "line 1: field 'text'": chunk_record(text=5),
        "line 1: field 'id'": chunk_record(id=7),
        "bm25/ indexes": lambda f: (shutil.rmtree(f / "bm25"), shutil.copytree(other / "bm25", f / "bm25")),
    }
    for number, (field, damage) in enumerate(fields.items()):
        folder = damaged(f"field-{number}", damage)
        cases["index_corrupt"].append(folder)
        with pytest.raises(RetrievalError) as error:
            Retriever.open(folder).index.search("Wren toner", k=3)
        assert error.value.code == "index_corrupt" and field in error.value.message, (field, error.value.message)
    for code, folders in cases.items():
        for folder in folders:
            with pytest.raises(RetrievalError) as error:
                open_index(folder)
            assert error.value.code == code, (folder.name, error.value)
            assert "--rebuild" in error.value.hint and "None" not in error.value.hint, folder.name
    for broken in (damaged("update-garbled", lambda f: (f / "chunks.jsonl").write_text("{bad\n", encoding="utf-8")),
                   damaged("update-sources", edit_manifest(lambda m: m.__setitem__("sources", {"a.txt": 1})))):
        with pytest.raises(RetrievalError) as error:  # --update reads the old chunks it keeps: refused, not a crash
            build_index([tmp_path / "a.txt"], broken, model=str(tiny_model_dir), update=True)
        assert error.value.code == "index_corrupt" and "--rebuild" in error.value.hint, broken.name
    latin1 = damaged("template-latin1", lambda f: (f / "prompt.txt").write_bytes(b"caf\xe9 {context} {question}"))
    with pytest.raises(RetrievalError) as template:  # the server's index, not the question, is at fault: a 503
        Retriever.open(latin1)
    assert template.value.code == "not_utf8" and "prompt.txt:1" in template.value.message


def test_documents_and_questions_are_never_substituted_into(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tunery.data.template import encode_prompt

    (tmp_path / "kb.md").write_text("The Wren toner doc quotes {question} and {context} literally.\n", encoding="utf-8")
    build_index([tmp_path / "kb.md"], tmp_path / "idx", model=str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    retriever = Retriever.open(tmp_path / "idx")
    asked = [{"role": "user", "content": "Wren toner {context} ?"}]
    prompt = retriever.prompt(asked, tokenizer, max_prompt_tokens=4096)
    assert prompt.hits and prompt.messages[-1]["content"].count("{question}") == 1
    assert prompt.messages[-1]["content"].endswith("quotes {question} and {context} literally.\n\n"
                                                   "Question: Wren toner {context} ?")
    tools = [{"type": "function", "function": {"name": "lookup_part", "description": "Look a part up.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    with_tools = retriever.prompt(asked, tokenizer, max_prompt_tokens=4096, tools=tools)
    assert with_tools.prompt_ids == encode_prompt(tokenizer, with_tools.messages, tools=tools)
    assert len(with_tools.prompt_ids) > len(prompt.prompt_ids)  # the tools are described, as without retrieval


def test_empty_files_and_broken_pdfs_are_skipped_with_a_warning(tmp_path, tiny_model_dir, make_pdf):
    from pypdf import PdfWriter

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_text("", encoding="utf-8")
    (docs / "blank.txt").write_text("\n\n   \n", encoding="utf-8")
    (docs / "empty.jsonl").write_text("\n", encoding="utf-8")
    make_pdf(docs / "cut.pdf", [["The Ibis scanner lamp is part RV-4444-B."]])
    (docs / "cut.pdf").write_bytes((docs / "cut.pdf").read_bytes()[:60])  # a download that stopped
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", [["The secret room is B7."]]))
    writer.encrypt("password", algorithm="RC4-128")
    with (docs / "locked.pdf").open("wb") as handle:
        writer.write(handle)
    warnings: list[str] = []
    with pytest.raises(RetrievalError) as nothing:
        build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), warn=warnings.append)
    assert nothing.value.code == "no_documents"
    text = "\n".join(warnings)
    assert "locked.pdf: skipped: the PDF is encrypted" in text and "cut.pdf" in text, text
    (docs / "real.md").write_text("The Wren printer toner is part MX-3333-D.\n", encoding="utf-8")
    report = build_index([docs], tmp_path / "idx", model=str(tiny_model_dir), warn=lambda _: None)
    assert report.chunks == 1 and open_index(tmp_path / "idx").search("Wren toner", k=5)[0].source == "docs/real.md"


def test_a_question_longer_than_the_context_is_a_located_error_in_eval(tmp_path, tiny_model_dir):
    from tunery.errors import EvaluationError
    from tunery.evaluation.compare import compare_models

    (tmp_path / "kb.md").write_text("The Wren printer toner is part MX-3333-D.\n", encoding="utf-8")
    build_index([tmp_path / "kb.md"], tmp_path / "idx", model=str(tiny_model_dir))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "Wren toner part?", "reference": "MX"}) + "\n"
                     + json.dumps({"prompt": "why " * 5000, "reference": "MX"}) + "\n", encoding="utf-8")
    with pytest.raises(EvaluationError) as too_long:
        compare_models([f"{tiny_model_dir}+rag:{tmp_path / 'idx'}"], tasks, tmp_path / "report", dtype="fp32")
    assert too_long.value.code == "context_length_exceeded" and f"{tasks}:2" in too_long.value.message
