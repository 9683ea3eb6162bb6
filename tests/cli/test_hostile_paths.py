"""Every CLI command against a binary file, a folder, /dev/null, a symlink loop and a missing path
(and a tunery.db that is each of those): a clear error or success, never a traceback, and
nothing outside the test's folder is written.

CASES lists every command; a command added without a row fails `test_every_command_is_probed`.
"""

from __future__ import annotations

import os

import pytest
import typer
from typer.testing import CliRunner

from tunery.cli import _register, app

_register()

KINDS = ["binary", "folder", "devnull", "loop", "missing"]
# {P} is the hostile path (with the suffix after the colon), {OUT} a fresh path, {DATA} a good dataset.
CASES = {
    "eval": [["eval", "{P:}", "--tasks", "{DATA}"], ["eval", "{TINY}", "--tasks", "{P:.jsonl}"],
             ["eval", "{TINY}", "--tasks", "{DATA}", "--judge", "{TINY}", "--rubric", "@{P:.txt}"]],
    "compare": [["compare", "{P:}", "{TINY}", "--tasks", "{DATA}", "--out", "{OUT}"],
                ["compare", "{TINY}", "{TINY}", "--tasks", "{P:.jsonl}", "--out", "{OUT}"]],
    "export": [["export", "{P:}", "--format", "adapter", "--out", "{OUT}"]],
    "serve": [["serve", "--model", "{P:}", "--port", "1"],
              ["serve", "--model", "{TINY}", "--adapter", "a={P:}", "--port", "1"]],
    "chat": [["chat", "{P:}"]],
    "train": [["train", "{P:.yaml}"], ["train", "--resume", "{P:}"]],
    "demo": [],  # takes no path
    "data check": [["data", "check", "{P:.jsonl}"], ["data", "check", "{DATA}", "--model", "{P:}"]],
    "data show": [["data", "show", "{P:.jsonl}", "--model", "{TINY}"]],
    "models list": [["models", "list"]],
    "models prepare": [["models", "prepare", "{P:}"]],
    "keys create": [["keys", "create"]],
    "keys list": [["keys", "list"]],
    "keys revoke": [["keys", "revoke", "abc"]],
    "feedback export": [["feedback", "export", "--out", "{P:.jsonl}"], ["feedback", "export", "--out", "{OUT}"]],
    "config validate": [["config", "validate", "{P:.yaml}"]],
    "config show": [["config", "show", "{P:.yaml}"]],
    "rag index": [["rag", "index", "{P:}", "--out", "{OUT}"], ["rag", "index", "{DATA}", "--out", "{P:}"]],
    "rag search": [["rag", "search", "{P:}", "hello"]],
    "ui-login": [],  # takes no path
    "files upload": [["files", "upload", "{P:.jsonl}"]],
    "models register": [["models", "register", "{P:}", "--name", "x"]],
    "loop run": [["loop", "run", "x", "--tasks", "{P:.jsonl}"]],
    # No path among their arguments (ids and names only); `worker` and `loop watch` run until stopped.
    **{name: [] for name in ("files list", "files rm", "files show", "jobs cancel", "jobs create", "jobs events",
                             "jobs list", "jobs pause", "jobs resume", "jobs show", "loop watch", "models promote",
                             "models rollback", "models show", "worker")},
}
USES_DATABASE = {"keys create", "keys list", "keys revoke", "feedback export", "models list"}


def all_commands() -> set[str]:
    _register()
    names = set()

    def walk(command, prefix):
        for name, sub in getattr(command, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(sub, f"{prefix}{name} ")
            else:
                names.add(prefix + name)

    walk(typer.main.get_command(app), "")
    return names


def test_every_command_is_probed():
    assert all_commands() == set(CASES)


def make_hostile(kind: str, folder, suffix: str) -> str:
    path = folder / f"{kind}{suffix}"
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81garbage\x00\xc3\x28" * 64 + os.urandom(256))
    elif kind == "folder":
        path.mkdir()
    elif kind == "devnull":  # a link to the device: were a bug to replace it, only the link would go
        path.symlink_to(os.devnull)
    elif kind == "loop":
        path.symlink_to(path)
    return str(path)


def fill(args, kind, tmp_path, tiny, data):
    filled = []
    for arg in args:
        if "{P:" in arg:
            head, rest = arg.split("{P:", 1)
            suffix, tail = rest.split("}", 1)
            arg = head + make_hostile(kind, tmp_path, suffix) + tail
        filled.append(arg.replace("{OUT}", str(tmp_path / "out")).replace("{TINY}", str(tiny))
                      .replace("{DATA}", str(data)))
    return filled


def assert_clean(result, args):
    # A TuneryError (or a mapped OS/text/database error) exits 1 or 2 through typer.Exit; anything
    # else escaping the command is a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tasks.jsonl"
    path.write_text('{"prompt": "2+2?", "reference": "4"}\n{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", sorted(c for c in CASES if CASES[c]))
def test_hostile_paths_give_clear_errors(command, kind, tmp_path, tiny_model_dir, dataset):
    runner = CliRunner()
    for args in CASES[command]:
        if not any("{P:" in a for a in args):
            continue
        case = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        case.mkdir()
        filled = fill(args, kind, case, tiny_model_dir, dataset)
        assert_clean(runner.invoke(app, filled), filled)
        assert all(link.is_symlink() for link in case.glob("devnull*")), filled  # never replaced by a file


@pytest.mark.parametrize("kind", ["binary", "folder", "devnull", "loop", "truncated"])
@pytest.mark.parametrize("command", sorted(USES_DATABASE))
def test_a_broken_database_gives_a_clear_error(command, kind, tunery_home, tmp_path, monkeypatch):
    db = tunery_home / "tunery.db"
    if kind == "truncated":
        from tunery.store import create_key, open_store

        store = open_store(db)
        for i in range(50):
            create_key(store, f"k{i}")
        store.close()
        for extra in ("-wal", "-shm"):
            (tunery_home / f"tunery.db{extra}").unlink(missing_ok=True)
        db.write_bytes(db.read_bytes()[:3000])
    elif kind == "loop":
        db.symlink_to(db)
    else:
        os.rename(make_hostile(kind, tunery_home, ".db"), db)
    args = fill(CASES[command][0], "missing", tmp_path, "", "")
    result = CliRunner().invoke(app, args)
    assert_clean(result, args)
    if command != "models list":
        assert result.exit_code != 0 and "database" in result.output
