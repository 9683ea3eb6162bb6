"""The whole chain on a run that `tunery.train` really wrote: compare it with its base, gate it, export it.

The tiny model learns one fixed answer, so the tuned run must win every example, and its merged
and GGUF exports must still give that answer and stop at the end of the turn.
"""

from __future__ import annotations

import json

import pytest
import torch

import tunery
from tunery.config import TrainConfig
from tunery.data.template import encode_prompt
from tunery.evaluation import compare_models
from tunery.export import export_run
from tunery.types import Conversation, Turn

ANSWER = "Part TX-4410 fits."


def conversation(i: int) -> Conversation:
    return Conversation(turns=(Turn("user", f"What is part {i}?"), Turn("assistant", ANSWER, True)))


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "fits"
    config = TrainConfig.model_validate({
        "base_model": str(tiny_model_dir), "method": "lora", "output_dir": str(out),
        "train": {"epochs": 40, "batch_size": 8, "learning_rate": 1e-2, "precision": "fp32", "warmup_steps": 1,
                  "seed": 7, "eval_every_steps": 20},
        "data": {"val_fraction": 0.0}})
    result = tunery.train(config, train_conversations=[conversation(i) for i in range(24)],
                          val_conversations=[conversation(i) for i in range(24, 30)], quiet=True)
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "parts.jsonl"
    rows = [{"prompt": f"What is part {i}?", "reference": r"Part TX-\d+ fits\.", "metric": ["regex", "exact_match"]}
            for i in range(30, 36)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tuned_run_beats_its_base_and_passes_gates(tiny_model_dir, trained_run, tasks_file, tmp_path):
    summary = compare_models([str(tiny_model_dir), str(trained_run)], tasks_file, tmp_path / "cmp",
                             gates=["regex.delta>=0.5", "no-regression", "regex>=1"], max_new_tokens=12,
                             dtype="fp32")
    assert summary.passed, [g.detail for g in summary.gates]
    comparison = summary.comparisons[0]
    assert comparison.outcomes == {"wins": 6, "losses": 0, "ties": 0}
    assert comparison.deltas["regex"]["delta"] == 1.0 and comparison.deltas["regex"]["low"] == 1.0
    assert {row["prediction"] for row in summary.models[1].rows} == {ANSWER}
    curves = summary.loss_curves["fits"]
    assert len(curves["train"]) == 120 and [p[0] for p in curves["val"]] == [0, 20, 40, 60, 80, 100, 120]
    assert curves["val"][-1][1] < curves["val"][0][1]
    assert "fits val" in (tmp_path / "cmp" / "report.html").read_text()
    lines = summary.headline_lines()
    assert "regex: tiny-model0 0.000 -> fits 1.000 (+1.000, 95% CI [+1.000, +1.000])" in lines
    assert "fits vs tiny-model0: 6 wins, 0 losses, 0 ties" in lines


def greedy_answer(model, tokenizer, generation_config=None) -> tuple[str, list[int]]:
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "What is part 77?"}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             generation_config=generation_config)
    new = out[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def test_exports_of_the_trained_run_keep_its_answer_and_stop(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    export_run(trained_run, "merged", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    text, new_ids = greedy_answer(merged, tokenizer, GenerationConfig.from_pretrained(tmp_path / "merged"))
    assert text == ANSWER
    assert new_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # stopped at the end of the turn

    result = export_run(trained_run, "gguf", tmp_path / "gguf", dtype="q8_0")
    name = result.path.rsplit("/", 1)[1]
    gguf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file=name)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=name)
    assert greedy_answer(gguf_model, gguf_tokenizer)[0] == ANSWER
