"""Fixtures of the retrieval tests: PDFs written by hand, with a text layer or without one."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_pdf(path: Path, pages: list[list[str] | None]) -> Path:
    """One page per item: a list of text lines drawn in Helvetica, or None for a page with no text."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        if lines:
            ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
            for line in lines:
                escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
                ops += [f"({escaped}) Tj", "T*"]
            ops.append("ET")
        else:
            ops = ["0.5 g", "72 600 200 100 re f"]  # a filled rectangle: ink, but no text
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_ref = len(objects)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % content_ref)
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def make_pdf():
    return write_pdf


def build_tiny_embedder(folder: Path, corpus: list[str]) -> Path:
    """A tiny random BERT with mean pooling, saved as a sentence-transformers folder (no network)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus * 5, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    bert_dir = folder / "bert"
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(bert_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert_dir, safe_serialization=True)
    transformer = models.Transformer(str(bert_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, models.Pooling(32, pooling_mode="mean")], device="cpu")
    model.save(str(folder / "embedder"))
    return folder / "embedder"


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory) -> Path:
    corpus = ["The Osprey switch fan is part KX-1111-A.", "Alpha bravo charlie delta echo foxtrot.",
              "Room B2.40 hosts the optics lab in Lyon.", "Widgets and gadgets weigh kilograms."]
    return build_tiny_embedder(tmp_path_factory.mktemp("embedder"), corpus)
