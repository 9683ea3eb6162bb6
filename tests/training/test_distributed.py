"""Two processes under torchrun (gloo on CPU) train like one process at the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tunery
from tunery.config import dump_config

ROOT = Path(__file__).parents[2]
SCRIPT = textwrap.dedent("""
    import sys
    import tunery
    from tunery.config import load_train_config
    from tests.training.conftest import make_conversations
    tunery.train(load_train_config(sys.argv[1]), train_conversations=make_conversations(24), quiet=True)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_at_the_same_global_batch(make_config, conversations, tmp_path):
    single = tunery.train(make_config("single", train={"batch_size": 4, "grad_accum": 2}),
                          train_conversations=conversations, quiet=True)
    config = make_config("ddp", train={"batch_size": 2, "grad_accum": 2})
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(dump_config(config))
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(config_path)],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    run_dir = Path(config.output_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["world_size"] == 2

    def losses(path):
        return [e["loss"] for e in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if e["type"] == "train"]

    assert len(losses(run_dir)) == len(losses(single.run_dir)) == 6
    assert losses(run_dir) == pytest.approx(losses(single.run_dir), abs=1e-5)
    # Only rank 0 writes: one metrics file with one line per step.
    assert len([e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if e["type"] == "train"]) == 6
