"""Readers: every format in every file type becomes the same Conversations; encodings and line endings."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data.dataset_files import chat_lines, chat_row, only_problem, problems_with, write_lines

from tunery.data import read_dataset
from tunery.types import Turn

ROWS = {
    "chat": [chat_row(i) for i in range(10)],
    "instruction": [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(10)],
    "prompt_completion": [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)],
}
EXPECTED_TURNS = [(Turn("user", f"question {i}"), Turn("assistant", f"answer {i}", True)) for i in range(10)]


def _write(path, rows, file_type):
    if file_type == "jsonl":
        write_lines(path, [json.dumps(r) for r in rows])
    elif file_type == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif file_type == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("file_type", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_each_format_in_each_file_type_gives_the_same_conversations(tmp_path, fmt, file_type):
    path = _write(tmp_path / f"d.{file_type}", ROWS[fmt], file_type)
    report = read_dataset(path)
    assert not report.problems, [str(p) for p in report.problems]
    assert [c.turns for c in report.conversations] == EXPECTED_TURNS
    assert report.files[0].format == fmt and report.files[0].examples == 10


def test_lines_point_at_the_source_line(tmp_path):
    json_path = _write(tmp_path / "d.json", ROWS["chat"], "json")  # indent=2: each element spans 12 lines
    assert [c.location.line for c in read_dataset(json_path).conversations][:3] == [2, 14, 26]
    rows = [{"prompt": "multi\nline\nprompt", "completion": f"c{i}"} for i in range(10)]
    csv_path = _write(tmp_path / "d.csv", rows, "csv")
    assert [c.location.line for c in read_dataset(csv_path).conversations][:3] == [2, 5, 8]
    assert read_dataset(csv_path).conversations[0].turns[0].content == "multi\nline\nprompt"


def test_instruction_input_is_appended_to_the_instruction(tmp_path):
    rows = [{"instruction": "Translate", "input": f"word {i}", "output": "mot"} for i in range(10)]
    conv = read_dataset(_write(tmp_path / "d.jsonl", rows, "jsonl")).conversations[0]
    assert conv.turns == (Turn("user", "Translate\n\nword 0"), Turn("assistant", "mot", True))


def test_text_rows_and_document_folders_become_text_examples(tmp_path):
    rows = [{"text": f"document {i}"} for i in range(10)]
    conv = read_dataset(_write(tmp_path / "t.jsonl", rows, "jsonl")).conversations[0]
    assert (conv.kind, conv.text, conv.turns[0].train) == ("text", "document 0", True)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(f"plain text {i}\n")
        (corpus / "sub" / f"note{i}.md").write_text(f"# Note {i}\n\nbody")
    (corpus / ".hidden.txt").write_text("skip me")
    (corpus / "image.png").write_bytes(b"\x89PNG")
    report = read_dataset(corpus)
    assert len(report.conversations) == 12 and report.formats == ["text"]
    assert report.conversations[0].text == "plain text 0\n"
    assert only_problem(report, "unsupported_file").severity == "warning"
    assert not report.errors


def test_folder_of_data_files_keeps_each_files_format(tmp_path):
    _write(tmp_path / "a.jsonl", ROWS["chat"][:5], "jsonl")
    _write(tmp_path / "b.csv", ROWS["prompt_completion"][5:], "csv")
    report = read_dataset(tmp_path)
    assert [f.format for f in report.files] == ["chat", "prompt_completion"]
    assert [c.turns for c in report.conversations] == EXPECTED_TURNS and not report.problems


def test_crlf_no_final_newline_and_blank_lines(tmp_path):
    lines = chat_lines(5) + ["", "   "] + chat_lines(5, start=5)
    path = write_lines(tmp_path / "d.jsonl", lines, newline="\r\n", final_newline=False)
    report = read_dataset(path)
    assert [c.turns for c in report.conversations] == EXPECTED_TURNS
    assert report.files[0].stats.blank_lines == 2
    assert [(p.code, p.severity) for p in report.problems] == [("blank_lines", "warning")]


def test_unicode_line_separators_inside_strings_do_not_split_lines(tmp_path):
    lines = [json.dumps({"prompt": f"a\u2028b\u0085c{i}", "completion": "d"}, ensure_ascii=False) for i in range(10)]
    report = read_dataset(write_lines(tmp_path / "d.jsonl", lines))
    assert not report.problems and report.conversations[9].turns[0].content == "a\u2028b\u0085c9"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_bom_and_utf16_files_are_decoded(tmp_path, encoding):
    text = "\n".join(chat_lines(10)).replace("question 0", "qüestion 0 ✓") + "\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode(encoding))
    report = read_dataset(path)
    assert len(report.conversations) == 10 and not report.errors
    assert report.conversations[0].turns[0].content == "qüestion 0 ✓"
    if encoding != "utf-8-sig":
        warning = only_problem(report, "encoding_utf16")
        assert encoding.split("-")[0].upper().replace("UTF", "UTF-") in warning.message


def test_csv_with_bom_header_and_utf16_truncated_is_refused(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(("prompt,completion\r\n" + "".join(f"p{i},c{i}\r\n" for i in range(10))).encode("utf-8-sig"))
    assert len(read_dataset(csv_path).conversations) == 10
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\xff\xfe" + "\n".join(chat_lines(2)).encode("utf-16-le") + b"\x00")
    problem = only_problem(read_dataset(broken), "invalid_encoding")
    assert "UTF-16-LE" in problem.message


def test_invalid_utf8_is_reported_per_line_and_other_lines_load(tmp_path):
    lines = [line.encode() for line in chat_lines(12)]
    lines[4] = lines[4].replace(b"question", b"qu\xe9stion")
    lines[7] = b"\xff" + lines[7]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = read_dataset(tmp_path / "d.jsonl")
    bad = problems_with(report, "invalid_utf8")
    assert [(p.line, p.message) for p in bad] == [(5, "byte 0xe9 at column 46 is not valid UTF-8"),
                                                  (8, "byte 0xff at column 1 is not valid UTF-8")]
    assert len(report.conversations) == 10 and not problems_with(report, "blank_lines")


@pytest.mark.parametrize(("content", "code"), [
    (b"", "empty_file"),
    (b"\n\n  \n", "empty_file"),
    (bytes(range(256)) * 20, "binary_file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "binary_file"),
    (b"\x1f\x8b\x08\x00rest", "compressed_file"),
    (b"PK\x03\x04workbook", "compressed_file"),
    (b"PAR1\x00\x00", "binary_file"),
])
def test_empty_binary_and_compressed_files_are_errors(tmp_path, content, code):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    assert only_problem(read_dataset(path), code).severity == "error"


def test_csv_missing_columns_ragged_rows_and_bad_quotes(tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("prompt,answer\n" + "".join(f"p{i},a{i}\n" for i in range(10)))
    problem = only_problem(read_dataset(missing), "missing_columns")
    assert problem.line == 1 and "completion" in problem.message
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('prompt,completion\n"multi\nline",c\np,c,extra\n' + "".join(f"p{i},c{i}\n" for i in range(10)))
    report = read_dataset(ragged)
    problem = only_problem(report, "csv_ragged_row")
    assert problem.line == 4 and "3 fields" in problem.message and len(report.conversations) == 11
    quotes = tmp_path / "quotes.csv"
    quotes.write_text('prompt,completion\n"a"b,c\n')
    assert only_problem(read_dataset(quotes), "csv_invalid").line == 2


def test_json_array_errors_are_located(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[\n" + ",\n".join(chat_lines(3)) + ",\n{broken\n]")
    report = read_dataset(path)
    assert only_problem(report, "invalid_json").line == 5 and len(report.conversations) == 3
    path.write_text('{"not": "an array"}\n{"messages": 1}')
    codes = {p.code for p in read_dataset(path).errors}
    assert "unknown_format" in codes and "wrong_type" in codes  # a .json of lines reads as JSONL
    path.write_text(json.dumps({"data": [chat_row(i) for i in range(10)]}, indent=2))
    assert only_problem(read_dataset(path), "json_not_array").line == 1


def test_parquet_chat_with_weight_on_some_messages(tmp_path):
    rows = [chat_row(i) for i in range(10)]
    rows[0]["messages"][1]["weight"] = 0
    rows[0]["messages"].append({"role": "assistant", "content": "again", "weight": 1})
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = read_dataset(path)
    assert not report.problems, [str(p) for p in report.problems]
    assert [t.train for t in report.conversations[0].turns] == [False, False, True]
    assert [t.train for t in report.conversations[1].turns] == [False, True]


def test_parquet_garbage_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    assert only_problem(read_dataset(path), "parquet_invalid").severity == "error"
