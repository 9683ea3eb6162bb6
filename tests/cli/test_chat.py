"""`tunery chat`: multi-line messages, greedy answers by default, /reset and /help answer."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.cli.serve import read_message


def lines_of(*lines: str):
    feed = iter(lines)
    asked: list[bool] = []

    def read_line(more: bool) -> str:
        asked.append(more)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return read_line, asked


@pytest.mark.parametrize(("lines", "message", "prompts"), [
    (["one line"], "one line", [False]),
    (["first \\", "second \\", "third"], "first \nsecond \nthird", [False, True, True]),
    (['"""', "pasted", "", "  indented", '"""'], "pasted\n\n  indented", [False, True, True, True, True]),
    (["unfinished \\"], "unfinished ", [False, True]),  # Ctrl-D sends what was typed
    ([], None, [False]),
])
def test_read_message(lines, message, prompts):
    read_line, asked = lines_of(*lines)
    assert read_message(read_line) == message and asked == prompts


def test_chat_is_greedy_and_answers_its_commands(tiny_model_dir):
    _register()
    question = "What is the capital of France?"
    script = f'/help\n{question}\n/reset\n/nope\n"""\n{question}\n"""\n/exit\n'
    result = CliRunner().invoke(app, ["chat", str(tiny_model_dir), "--dtype", "fp32", "--max-tokens", "12"],
                                input=script)
    assert result.exit_code == 0, result.output
    assert "/reset   clear the conversation" in result.output and "conversation cleared" in result.output
    assert "unknown command /nope; /help lists them" in result.output
    answers = [part.split("\n")[0] for part in result.output.split("model> ")[1:]]
    assert len(answers) == 2 and answers[0] == answers[1]  # greedy: the same question after /reset, the same answer
