"""The loop's promises: accumulation equivalence, exact resume, fault handling, loadable outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunery
from tests.training.conftest import assert_peft_loads_like_tunery
from tunery.errors import ConfigError, TrainingError
from tunery.models import load_tokenizer
from tunery.training.checkpoints import list_checkpoints


def train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if e["type"] == "train"]


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), name


def test_batch_8_accum_1_equals_batch_4_accum_2(make_config, conversations):
    one = tunery.train(make_config("b8", train={"batch_size": 8, "grad_accum": 1}),
                       train_conversations=conversations, quiet=True)
    two = tunery.train(make_config("b4", train={"batch_size": 4, "grad_accum": 2}),
                       train_conversations=conversations, quiet=True)
    assert one.steps == two.steps == 6
    losses_one, losses_two = train_losses(one.run_dir), train_losses(two.run_dir)
    assert losses_one == pytest.approx(losses_two, abs=1e-5)
    assert losses_one[-1] < losses_one[0]
    assert_same_weights(adapter_weights(one.run_dir), adapter_weights(two.run_dir), atol=1e-5)


def test_unpacked_training_matches_packed(make_config, conversations):
    packed = tunery.train(make_config("packed"), train_conversations=conversations, quiet=True)
    padded = tunery.train(make_config("padded", data={"packing": False}), train_conversations=conversations, quiet=True)
    assert train_losses(packed.run_dir) == pytest.approx(train_losses(padded.run_dir), abs=1e-4)


def test_interrupt_then_resume_equals_a_straight_run(make_config, conversations, val_conversations):
    sections = {"train": {"epochs": 3, "batch_size": 4, "eval_every_steps": 5, "save_every_steps": 4},
                "lora": {"dropout": 0.1}}  # dropout: resume must restore the RNG too
    straight = tunery.train(make_config("straight", **sections), train_conversations=conversations,
                            val_conversations=val_conversations, quiet=True)

    def interrupt_at_step_7(event):
        if event["type"] == "train" and event["step"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    first = tunery.train(make_config("resumed", **sections), train_conversations=conversations,
                         val_conversations=val_conversations, quiet=True, on_event=interrupt_at_step_7)
    assert first.status == "interrupted" and first.steps == 7
    assert first.resume_command == f"tunery train --resume {first.run_dir}"
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (first.run_dir / "adapter").exists()
    resumed = tunery.train(resume=first.run_dir, train_conversations=conversations,
                           val_conversations=val_conversations, quiet=True)
    assert resumed.status == "completed" and resumed.steps == straight.steps == 18
    assert train_losses(resumed.run_dir) == pytest.approx(train_losses(straight.run_dir), abs=1e-6)
    assert_same_weights(adapter_weights(resumed.run_dir), adapter_weights(straight.run_dir), atol=1e-6)
    assert resumed.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"], abs=1e-6)
    # The summary speaks for the whole run, not the session after the resume.
    assert resumed.metrics["first_train_loss"] == pytest.approx(straight.metrics["first_train_loss"], abs=1e-6)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import tunery.training.checkpoints as ckpt
    from tunery.config import load_train_config
    from tests.training.conftest import make_conversations
    real_save = ckpt.save_file
    def save_then_die(tensors, path):
        real_save(tensors, path)
        if "step-6" in path:  # the second checkpoint: die after its first file
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.save_file = save_then_die
    import tunery
    tunery.train(load_train_config(sys.argv[1]), train_conversations=make_conversations(24), quiet=True)
""")


def test_sigkill_while_saving_keeps_the_previous_checkpoint(make_config, conversations, tmp_path):
    config = make_config("killed", train={"save_every_steps": 3})
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(tunery.config.dump_config(config))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(config_path)], cwd=Path(__file__).parents[2],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    run_dir = Path(config.output_dir)
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [3]
    assert (run_dir / "checkpoints" / ".tmp-step-6").is_dir()
    resumed = tunery.train(resume=run_dir, train_conversations=conversations, quiet=True)
    assert resumed.status == "completed"
    assert not (run_dir / "checkpoints" / ".tmp-step-6").exists()
    straight = tunery.train(make_config("straight", train={"save_every_steps": 3}),
                            train_conversations=conversations, quiet=True)
    assert train_losses(resumed.run_dir) == pytest.approx(train_losses(straight.run_dir), abs=1e-6)


def test_checkpoint_not_matching_its_manifest_is_refused(make_config, conversations):
    config = make_config("tampered", train={"epochs": 3, "save_every_steps": 3, "keep_checkpoints": 5})
    messages = []

    def interrupt(event):
        if event["type"] == "train" and event["step"] == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    first = tunery.train(config, train_conversations=conversations, quiet=True, on_event=interrupt)
    checkpoints = dict(list_checkpoints(first.run_dir / "checkpoints"))
    assert sorted(checkpoints) == [3, 6, 9]
    with open(checkpoints[9] / "trainable.safetensors", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")

    class Collect(tunery.training.progress.Reporter):
        def message(self, text):
            messages.append(text)

    tunery.train(resume=first.run_dir, train_conversations=conversations, reporter=Collect())
    assert any("step-9 refused" in m and "sha256" in m for m in messages)
    assert any("resuming from step-6" in m for m in messages)


def test_nan_loss_stops_with_failed_status_and_keeps_last_good_checkpoint(make_config, conversations):
    config = make_config("nan", method="full", train={"learning_rate": 1e30, "max_grad_norm": None,
                                                       "save_every_steps": 1, "warmup_steps": 0})
    with pytest.raises(TrainingError) as info:
        tunery.train(config, train_conversations=conversations, quiet=True)
    assert info.value.code == "nan_loss"
    run_dir = Path(config.output_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["code"] == "nan_loss"
    assert run["error"]["step"] >= 2
    assert not (run_dir / "model").exists()
    steps = [s for s, _ in list_checkpoints(run_dir / "checkpoints")]
    assert steps and max(steps) == run["error"]["step"] - 1


def test_lora_adapter_loads_in_peft_with_the_same_logits(make_config, conversations, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    result = tunery.train(make_config("adapter"), train_conversations=conversations, quiet=True)
    run_dir = result.run_dir
    assert {"config.yaml", "run.json", "metrics.jsonl", "checkpoints", "adapter", "tokenizer_config.json"} <= {
        p.name for p in run_dir.iterdir()}
    text = "What is part 3? Part 3 is TX-21."
    got = assert_peft_loads_like_tunery(tiny_model_dir, run_dir, text, atol=1e-5)
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.tensor([load_tokenizer(str(tiny_model_dir)).encode(text)])
    with torch.no_grad():
        assert not torch.allclose(fresh(input_ids=ids).logits, got, atol=1e-3)  # training changed something
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["lineage"]["dataset_version"] and run["lineage"]["base_weights_sha256"]


def test_full_fine_tuning_writes_a_transformers_model(make_config, conversations):
    from transformers import AutoModelForCausalLM

    result = tunery.train(make_config("full", method="full"), train_conversations=conversations, quiet=True)
    assert result.model_path == result.run_dir / "model" and result.adapter_path is None
    model = AutoModelForCausalLM.from_pretrained(str(result.model_path))
    assert model.config.num_hidden_layers == 2
    assert train_losses(result.run_dir)[-1] < train_losses(result.run_dir)[0]


def test_qlora_trains_adapters_on_a_4bit_base(make_config, conversations):
    result = tunery.train(make_config("qlora", method="qlora"), train_conversations=conversations, quiet=True)
    losses = train_losses(result.run_dir)
    assert result.status == "completed" and losses[-1] < losses[0]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_early_stopping_and_best_checkpoint(make_config, conversations, val_conversations):
    config = make_config("early", train={"epochs": 30, "learning_rate": 0.3, "eval_every_steps": 1,
                                         "early_stopping_patience": 2, "keep_checkpoints": 1})
    result = tunery.train(config, train_conversations=conversations, val_conversations=val_conversations, quiet=True)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["stopped_early"] and result.steps < 180
    kept = [s for s, _ in list_checkpoints(result.run_dir / "checkpoints")]
    assert run["best_step"] in kept and result.steps in kept
    assert result.metrics["best_val_loss"] < result.metrics["val_loss"]


def test_an_existing_run_directory_is_not_overwritten(make_config, conversations):
    tunery.train(make_config("once"), train_conversations=conversations, quiet=True)
    with pytest.raises(ConfigError) as info:
        tunery.train(make_config("once"), train_conversations=conversations, quiet=True)
    assert info.value.code == "run_exists" and "--resume" in info.value.hint


def test_splitting_micro_batches_by_tokens_gives_the_same_update(make_config, conversations):
    whole = tunery.train(make_config("whole", train={"batch_size": 8, "micro_batch_tokens": 0}),
                         train_conversations=conversations, quiet=True)
    split = tunery.train(make_config("split", train={"batch_size": 8, "micro_batch_tokens": 40}),
                         train_conversations=conversations, quiet=True)
    assert train_losses(whole.run_dir) == pytest.approx(train_losses(split.run_dir), abs=1e-5)
    assert_same_weights(adapter_weights(whole.run_dir), adapter_weights(split.run_dir), atol=1e-5)


def test_the_bar_is_labelled_with_what_the_run_does(make_config, conversations, val_conversations):
    from tunery.training.progress import Reporter

    class Phases(Reporter):
        def __init__(self):
            self.seen: list[str] = []

        def phase(self, label: str) -> None:
            if not self.seen or self.seen[-1] != label:
                self.seen.append(label)

    reporter = Phases()
    tunery.train(make_config("phases", train={"max_steps": 2, "eval_every_steps": 2}),
                 train_conversations=conversations, val_conversations=val_conversations, reporter=reporter)
    assert reporter.seen == ["validating", "training", "validating", "saving"]


def test_weight_files_read_like_the_rest_of_the_run(make_config, conversations):
    result = tunery.train(make_config("modes", train={"max_steps": 1}), train_conversations=conversations, quiet=True)
    expected = (result.run_dir / "config.yaml").stat().st_mode & 0o777
    weights = [*result.run_dir.glob("adapter/*"), *result.run_dir.glob("checkpoints/*/*")]
    assert any(p.suffix == ".safetensors" for p in weights)
    assert {p.name: p.stat().st_mode & 0o777 for p in weights} == {p.name: expected for p in weights}
