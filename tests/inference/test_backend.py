"""Choosing the decode backend: `auto` takes the lane where it applies, `lane` refuses with the reason
where it does not, TUNERY_DECODE sets the default, and the banner line says which runs and why."""

from __future__ import annotations

import pytest

from tunery.errors import ConfigError
from tunery.inference import Engine
from tunery.inference.quant import quantize_model


def test_auto_takes_the_lane_on_int4_and_torch_elsewhere(tiny):
    model, tokenizer, stops = tiny
    full = Engine(model, tokenizer, stops)
    assert full.backend.name == "torch"
    assert "the fast lane does not apply: the output head is not int8" in full.decode_status
    quantize_model(model, "int4")
    lane = Engine(model, tokenizer, stops)
    assert lane.backend.name == "lane" and lane.decode_status.startswith("decode: lane (compiled passes, ")
    forced = Engine(model, tokenizer, stops, decode="torch")
    assert forced.backend.name == "torch" and "--decode torch" in forced.decode_status


def test_lane_refuses_with_the_reason_where_it_does_not_apply(tiny, monkeypatch):
    model, tokenizer, stops = tiny
    with pytest.raises(ConfigError, match="--decode lane: the fast lane does not apply: the output head is not int8"):
        Engine(model, tokenizer, stops, decode="lane")
    monkeypatch.setenv("TUNERY_DECODE", "lane")
    with pytest.raises(ConfigError, match="the fast lane does not apply"):
        Engine(model, tokenizer, stops)
    monkeypatch.setenv("TUNERY_DECODE", "fastest")
    with pytest.raises(ConfigError, match="TUNERY_DECODE 'fastest' is not one of auto, torch, lane"):
        Engine(model, tokenizer, stops)
    monkeypatch.setenv("TUNERY_DECODE", "torch")
    quantize_model(model, "int4")
    assert Engine(model, tokenizer, stops).backend.name == "torch"


def test_serve_and_chat_take_decode(tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from tunery.cli import _register, app

    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["chat", str(tiny_model_dir), "--dtype", "fp32", "--decode", "lane"], input="/exit\n")
    assert result.exit_code == 2 and "the fast lane does not apply" in result.output
    result = runner.invoke(app, ["chat", str(tiny_model_dir), "--dtype", "fp32", "--weights", "int4"], input="/exit\n")
    assert result.exit_code == 0 and "decode: lane (compiled passes" in result.output
    monkeypatch.setenv("TUNERY_DECODE", "torch")
    result = runner.invoke(app, ["chat", str(tiny_model_dir), "--dtype", "fp32", "--weights", "int4"], input="/exit\n")
    assert result.exit_code == 0 and "decode: torch (the model's own forward; asked for (--decode torch))" in result.output
    assert "--decode" in runner.invoke(app, ["serve", "--help"]).output
