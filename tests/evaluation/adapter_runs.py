"""Build run directories the way `tunery train` leaves them (adapter on the tiny model), for tests.

Used by the evaluation and export tests until they can afford real training runs; the layout
follows DESIGN.md's run-directory contract.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_adapter_run(base_dir: Path, run_dir: Path, *, seed: int = 1, scale: float = 0.5,
                     status: str = "completed", steps: int = 6) -> Path:
    """A LoRA run on `base_dir` whose B matrices are random, so it changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(run_dir / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run_dir)
    info = {"status": status, "lineage": {"base_model": str(base_dir)}, "method": "lora"}
    (run_dir / "run.json").write_text(json.dumps(info))
    events = [{"event": "train", "step": s, "loss": 3.0 - 0.3 * s} for s in range(1, steps + 1)]
    events += [{"event": "val", "step": s, "val_loss": 3.1 - 0.25 * s} for s in (3, 6)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir
