"""Model cards (README.md with hub front matter) for what tunery writes: adapters, merged folders, GGUF.

The front matter uses the hub's keys (`base_model`, `license`, `library_name`, `tags`) so the hub,
gguf-py and PEFT read it; the body says how the model was made. Paths on this machine stay out.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery.models.portable import base_hub_id, base_license, write_json_atomic

LIBRARY_BY_KIND = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
SHOWN_METRICS = ("train_loss", "val_loss", "best_val_loss", "initial_val_loss", "tokens_seen")


def model_card(kind: str, name: str, info: dict) -> str:
    """The card of run `name` exported as `kind`, from the run's run.json contents `info`."""
    lineage = info.get("lineage") or {}
    base_ref = lineage.get("base_model") or info.get("base_model")
    hub_id = base_hub_id(base_ref)
    license_id = base_license(base_ref) or "other"
    front = ["---", f"license: {license_id}", f"library_name: {LIBRARY_BY_KIND[kind]}"]
    if hub_id:
        front.append(f"base_model: {hub_id}")
    front += ["tags:", "- tunery", f"- {info.get('method') or 'fine-tuned'}", "---", ""]
    base_text = hub_id or (Path(base_ref).name if base_ref else "unknown")
    body = [f"# {name}", "",
            f"A {describe_method(info.get('method'))} of [{base_text}](https://huggingface.co/{hub_id})."
            if hub_id else f"A {describe_method(info.get('method'))} of {base_text}.", "",
            "| | |", "| --- | --- |",
            f"| Base model | {base_text} |",
            f"| Method | {info.get('method') or 'unknown'} |",
            f"| Dataset version | {lineage.get('dataset_version') or 'unknown'} |",
            f"| Steps | {info.get('steps', info.get('total_steps', 'unknown'))} |",
            f"| Seed | {lineage.get('seed', 'unknown')} |",
            f"| Licence | {license_id} (the base model's) |"]
    metrics = info.get("metrics") or info.get("final_metrics") or {}
    for key in SHOWN_METRICS:
        if isinstance(metrics.get(key), (int, float)):
            body.append(f"| {key.replace('_', ' ')} | {round(metrics[key], 4)} |")
    body += ["", usage_text(kind, hub_id or base_text), "",
             f"Made with tunery {lineage.get('tunery_version') or ''}".rstrip() + "."]
    return "\n".join(front + body) + "\n"


def describe_method(method: str | None) -> str:
    return {"lora": "LoRA fine-tune", "qlora": "QLoRA fine-tune", "dora": "DoRA fine-tune",
            "full": "full fine-tune"}.get(method or "", "fine-tune")


def usage_text(kind: str, base: str) -> str:
    if kind == "adapter":
        return ("```python\nfrom peft import AutoPeftModelForCausalLM\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(\"PATH_TO_THIS_FOLDER\")\n```\n"
                f"The adapter applies to `{base}`.")
    if kind == "merged":
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(\"PATH_TO_THIS_FOLDER\")\n```")
    return "Load the `.gguf` file with llama.cpp (`llama-cli -m FILE.gguf`), or `ollama create` with the Modelfile."


def read_run_info(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def point_adapter_at_hub(adapter_dir: Path, base_ref: str | None) -> None:
    """Name the base by its hub id in adapter_config.json (PEFT reads it); keep the local path in
    tunery-adapter.json, tunery's own record."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    local = config.get("base_model_name_or_path")
    hub_id = base_hub_id(base_ref)
    write_json_atomic(Path(adapter_dir) / "tunery-adapter.json",
                      {"base_model": base_ref, "base_model_path": local, "base_model_hub_id": hub_id})
    if hub_id and local != hub_id:
        config["base_model_name_or_path"] = hub_id
        write_json_atomic(path, config)
