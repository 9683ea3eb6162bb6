"""Every export of a freshly trained run opens in the tool it is for and answers as tunery does.

GGUF files (f32, f16, bf16, q8_0) in llama.cpp (llama-cpp-python); the merged folder and the adapter
in transformers 4.x (the declared floor, from the ecosystem environment `make test-ecosystem`
builds) and 5.x (this environment). Each tool must tokenize like tunery and give tunery's greedy
answers. Run with `make test-ecosystem`; TUNERY_ECOSYSTEM_PYTHON names that environment's python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunery
from tunery.config import TrainConfig

ROOT = Path(__file__).parents[2]
PROBE = Path(__file__).with_name("probe.py")
MAX_NEW_TOKENS = 24
TEXTS = ["The printer on floor 3 is offline again; queue #4410 stuck since 09:15.",
         "Réinitialiser mon jeton VPN, s'il vous plaît — 12345 😀 日本語 tabs\tand  double  spaces\n\nend"]
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")

# A fresh run, every export and three tools' loads: past the suite's 600 s default on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def ecosystem_python() -> str:
    python = os.environ.get("TUNERY_ECOSYSTEM_PYTHON")
    if not python or not Path(python).is_file():
        pytest.fail("TUNERY_ECOSYSTEM_PYTHON must name the ecosystem environment's python: run `make test-ecosystem`")
    return python


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ecosystem")


@pytest.fixture(scope="module")
def chats() -> list[list[dict]]:
    rows = [json.loads(line) for line in (ROOT / "examples/helpdesk/validation.jsonl").read_text().splitlines()[:2]]
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows] + [
        [{"role": "user", "content": "What is the capital of France?"}]]


@pytest.fixture(scope="module")
def run_dir(default_model_dir, workdir) -> Path:
    subset = workdir / "train.jsonl"
    subset.write_text("".join((ROOT / "examples/helpdesk/train.jsonl").read_text().splitlines(keepends=True)[:16]))
    config = TrainConfig.model_validate({
        "base_model": "smollm2-135m-instruct", "method": "lora", "output_dir": str(workdir / "run"),
        "data": {"train": str(subset), "val_fraction": 0.25, "max_seq_len": 384},
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"}})
    result = tunery.train(config, quiet=True)
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture(scope="module")
def exports(run_dir, workdir):
    """`exports(kind)`: the run exported as `kind` (adapter, merged, gguf-TYPE), once per module."""
    from tunery.export import export_run

    done: dict[str, Path] = {}

    def export_of(kind: str) -> Path:
        if kind not in done:
            fmt, _, dtype = kind.partition("-")
            done[kind] = Path(export_run(run_dir, fmt, workdir / kind, dtype=dtype or None).path)
        return done[kind]

    return export_of


def tunery_reference(ref: str | Path, chats: list[list[dict]]) -> dict:
    """tunery's own tokens and greedy answers for a model reference (a run, or a .gguf file)."""
    from tunery.data.template import encode_prompt, encode_text, stop_token_ids
    from tunery.evaluation.generation import generate_texts
    from tunery.models import load_model

    model, tokenizer = load_model(str(ref), dtype="fp32", device="cpu")
    answers = [g.text for g in generate_texts(model, tokenizer, chats, max_new_tokens=MAX_NEW_TOKENS, batch_size=1)]
    return {"tokens": [encode_text(tokenizer, text) for text in TEXTS],
            "prompt_ids": [encode_prompt(tokenizer, messages) for messages in chats], "answers": answers,
            "stop_token_ids": sorted(stop_token_ids(tokenizer))}


def run_probe(python: str, request: dict, workdir: Path) -> dict:
    path = workdir / "probe-request.json"
    path.write_text(json.dumps(request))
    done = subprocess.run([python, str(PROBE), str(path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["merged", "adapter"])
def test_folders_load_alike_in_transformers_4_and_5(kind, run_dir, exports, chats, ecosystem_python, workdir,
                                                     default_model_dir):
    reference = tunery_reference(run_dir, chats)
    request = {"kind": kind, "path": str(exports(kind)), "base": str(default_model_dir), "texts": TEXTS,
               "chats": chats, "max_new_tokens": MAX_NEW_TOKENS, "stop_token_ids": reference["stop_token_ids"]}
    for python, major in ((ecosystem_python, "4."), (sys.executable, "5.")):
        seen = run_probe(python, request, workdir)
        assert seen["tool"].startswith(f"transformers {major}"), seen["tool"]
        assert seen["rope_theta"] == 100000.0
        assert seen["tokens"] == reference["tokens"], seen["tool"]
        assert seen["prompt_ids"] == reference["prompt_ids"], seen["tool"]
        assert seen["answers"] == reference["answers"], seen["tool"]
    if kind == "adapter":
        config = json.loads((exports(kind) / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("gguf_type", GGUF_TYPES)
def test_gguf_answers_in_llama_cpp_as_in_tunery(gguf_type, exports, chats, ecosystem_python, workdir):
    path = exports(f"gguf-{gguf_type}")
    reference = tunery_reference(path, chats)  # tunery serving the same file
    request = {"kind": "gguf", "path": str(path), "texts": TEXTS, "chats": chats, "max_new_tokens": MAX_NEW_TOKENS}
    seen = run_probe(ecosystem_python, request, workdir)
    assert seen["tokens"] == reference["tokens"]
    if gguf_type in ("q8_0", "bf16"):
        # llama.cpp multiplies q8_0 weights with activations rounded to 8 bits as well (ggml's q8_0 x q8_0
        # dot product), and bf16 weights with activations rounded to bf16 (its bf16 x bf16 dot product);
        # tunery computes with the dequantized weights in fp32: a near-tie can flip a greedy token (seen on
        # the ticket prompt in q8_0; in bf16 on the capital prompt after 12 words alike, with a 3-step
        # adapter trained on an AVX2-only EPYC). A damaged file answers nothing alike; one whole answer must agree.
        assert any(a == b for a, b in zip(seen["answers"], reference["answers"], strict=True)), \
            (seen["answers"], reference["answers"])
    else:
        assert seen["answers"] == reference["answers"], (gguf_type, seen["answers"], reference["answers"])
