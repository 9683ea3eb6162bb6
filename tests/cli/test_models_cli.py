"""`tunery models ...` and the CLI's error mapping: clear message and hint, exit code, no traceback."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from tunery.cli import _register, app

_register()
runner = CliRunner()


def test_models_list_json_names_the_builtin():
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0
    assert '"smollm2-135m-instruct"' in result.stdout


def test_unknown_model_is_an_error_without_traceback():
    result = runner.invoke(app, ["models", "prepare", "./does/not/exist"])
    assert result.exit_code == 1
    assert "model_not_found" in result.output and "Traceback" not in result.output


def test_python_dash_m_runs_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "tunery", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "models" in proc.stdout
