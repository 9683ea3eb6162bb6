"""Writes that fail part-way (a full disk): a clear error, earlier checkpoints intact, nothing half-written.

The operating system makes the writes fail: RLIMIT_FSIZE turns every write past the limit into
EFBIG (SIGXFSZ ignored), which reaches the code the same way ENOSPC does, as an I/O error inside
safetensors or Python's own file writes.
"""

from __future__ import annotations

import contextlib
import resource
import signal

import pytest
import torch

from tunery.errors import CheckpointError, TrainingError
from tunery.training import checkpoints as ckpt
from tunery.training.rundir import publish_folder


@contextlib.contextmanager
def writes_fail_beyond(nbytes: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_checkpoint_write_leaves_the_previous_one_valid(tmp_path):
    tmp_path = tmp_path / "checkpoints"
    first = {"trainable": {"w": torch.randn(64, 64)}}
    ckpt.save_checkpoint(tmp_path, 1, first, {"step": 1})
    with writes_fail_beyond(4096), pytest.raises(CheckpointError) as failure:
        ckpt.save_checkpoint(tmp_path, 2, {"trainable": {"w": torch.randn(64, 64)}}, {"step": 2})
    assert failure.value.code == "checkpoint_write_failed"
    assert "step-2" in str(failure.value) and "free disk space" in failure.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no partial folder left
    latest = ckpt.latest_valid_checkpoint(tmp_path)
    assert latest is not None and latest.step == 1
    torch.testing.assert_close(latest.tensors("trainable")["w"], first["trainable"]["w"])


def test_a_failed_export_write_publishes_nothing(tmp_path):
    from safetensors.torch import save_file

    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    target = tmp_path / "adapter"

    def write(folder):
        folder.mkdir()
        save_file({"w": torch.randn(64, 64)}, str(folder / "adapter_model.safetensors"))

    with writes_fail_beyond(4096), pytest.raises(TrainingError) as failure:
        publish_folder(write, target)
    assert failure.value.code == "export_write_failed"
    assert list(tmp_path.iterdir()) == []
