"""FSDP2 full fine-tuning under torchrun (gloo on CPU): same losses and weights as one process.

The sharded run is stopped after step 3 (SIGTERM → checkpoint gathered to rank 0) and resumed in
a fresh torchrun, so the check also covers the gather/scatter of weights and AdamW moments. 21
training and 17 validation examples leave the processes with unequal numbers of micro-batches and
validation batches, which a sharded model must even out (every pass is collective).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunery
from tunery.config import dump_config
from tunery.errors import ConfigError
from tunery.training import checkpoints as ckpt

from .conftest import make_conversations
from .test_distributed import free_port

ROOT = Path(__file__).parents[2]
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import tunery
    from tunery.config import load_train_config
    from tests.training.conftest import make_conversations
    data = {"train_conversations": make_conversations(21), "val_conversations": make_conversations(17, offset=100)}

    def stop_after_3(event):
        if event.get("type") == "train" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    if sys.argv[1] == "start":
        result = tunery.train(load_train_config(sys.argv[2]), quiet=True, on_event=stop_after_3, **data)
    else:
        result = tunery.train(resume=sys.argv[2], quiet=True, **data)
    sys.stdout.write(f"STATUS {result.status}\\n")  # one write: the ranks share the pipe
""")


def torchrun(script: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    errors = proc.stderr.decode()
    assert proc.returncode == 0, errors[errors.find("Traceback"):][:4000]
    return proc.stdout.decode()


def losses(run_dir: Path, kind: str = "train") -> list[float]:
    events = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [e["loss" if kind == "train" else "val_loss"] for e in events if e["type"] == kind]


def test_fsdp_matches_one_process_through_a_resume(make_config, tmp_path, tiny_model_dir):
    single = tunery.train(make_config("single", method="full", train={"batch_size": 4, "grad_accum": 2}),
                          train_conversations=make_conversations(21),
                          val_conversations=make_conversations(17, offset=100), quiet=True)
    config = make_config("fsdp", method="full", train={"batch_size": 2, "grad_accum": 2, "fsdp": True})
    config_path = tmp_path / "fsdp.yaml"
    config_path.write_text(dump_config(config))
    script = tmp_path / "train_fsdp.py"
    script.write_text(SCRIPT)
    run_dir = Path(config.output_dir)

    assert torchrun(script, "start", str(config_path)).count("STATUS interrupted") == 2
    checkpoint = ckpt.latest_valid_checkpoint(run_dir / "checkpoints")
    assert checkpoint.step == 3
    # Rank 0 wrote full (unsharded) tensors: same names and shapes as the single-process model's.
    full = load_file(str(single.model_path / "model.safetensors"))
    saved = checkpoint.tensors("trainable")
    assert saved and all(saved[k].shape == full[k].shape for k in saved)
    assert {k.split("::")[1] for k in checkpoint.tensors("optimizer")} == {"exp_avg", "exp_avg_sq", "step"}

    assert torchrun(script, "resume", str(run_dir)).count("STATUS completed") == 2
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["world_size"] == 2 and run["steps"] == 6
    assert len(losses(single.run_dir)) == 6 and len(losses(single.run_dir, "val")) == 3
    assert losses(run_dir) == pytest.approx(losses(single.run_dir), abs=1e-5)
    assert losses(run_dir, "val") == pytest.approx(losses(single.run_dir, "val"), abs=1e-5)

    from transformers import AutoModelForCausalLM

    sharded = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(single.model_path).state_dict()
    assert sharded.keys() == reference.keys()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    # Adam divides by the gradient's own scale, so summation-order noise in a tiny gradient moves a
    # weight by up to ~1e-5 after 6 steps; training itself moved the weights by ~1e-2 per step.
    for name, tensor in reference.items():
        torch.testing.assert_close(sharded[name], tensor, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    moved = (sharded["model.layers.0.mlp.down_proj.weight"] - base["model.layers.0.mlp.down_proj.weight"]).abs().max()
    assert moved > 1e-2


def test_fsdp_is_refused_for_adapters_and_for_one_process(make_config, conversations):
    lora = make_config("lora", method="lora", train={"fsdp": True})
    with pytest.raises(ConfigError) as refused:
        tunery.train(lora, train_conversations=conversations, quiet=True)
    assert refused.value.code == "fsdp_method" and "full fine-tuning only" in refused.value.message
    single = make_config("one", method="full", train={"fsdp": True})
    with pytest.raises(ConfigError) as refused:
        tunery.train(single, train_conversations=conversations, quiet=True)
    assert refused.value.code == "fsdp_single_process" and "torchrun" in refused.value.hint
    assert not Path(lora.output_dir).exists() and not Path(single.output_dir).exists()
