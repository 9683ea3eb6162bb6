"""Merged export: one Hugging Face safetensors folder with weights, tokenizer, chat template and a
generation config whose EOS ids stop at the end of a turn. Also the adapter-only export.

Writers here fill a folder they are given; `run.py` owns temp folders, verification and renames.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunery.data.template import stop_token_ids
from tunery.errors import ExportError
from tunery.models import load_model
from tunery.models.load import LOCAL_ONLY
from tunery.models.portable import make_folder_portable

MERGED_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def default_merged_dtype(model) -> str:
    """The dtype the base was published in (bf16 for most modern models), as fp32/bf16/fp16."""
    import torch

    configured = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    name = str(configured).replace("torch.", "") if configured is not None else "float32"
    by_torch = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    for key, value in MERGED_DTYPES.items():
        if value == name:
            return key
    return by_torch.get(configured, "fp32") if isinstance(configured, torch.dtype) else "fp32"


def write_generation_config(model, tokenizer, folder: Path) -> None:
    """Greedy-by-default generation settings that stop on EOS and every end-of-turn token."""
    from transformers import GenerationConfig


    stops = list(stop_token_ids(tokenizer))
    config = GenerationConfig(eos_token_id=stops if len(stops) > 1 else stops[0],
                              pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id)
    config.save_pretrained(folder)


def write_merged(model, tokenizer, folder: Path, dtype: str) -> None:
    """Save the merged model in `dtype` with tokenizer, chat template and generation config."""
    import torch

    if dtype not in MERGED_DTYPES:
        raise ExportError(f"merged export dtype must be one of {sorted(MERGED_DTYPES)}, got {dtype!r}",
                          code="invalid_dtype")
    model = model.to(getattr(torch, MERGED_DTYPES[dtype]))
    model.config.use_cache = True
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_generation_config(model, tokenizer, folder)
    make_folder_portable(folder)
    if not any(folder.glob("*.safetensors")):
        raise ExportError(f"saving the merged model wrote no safetensors into {folder}", code="export_write_failed")


def reload_merged(folder: Path):
    """The exported folder loaded the way a user would, computing in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True, **LOCAL_ONLY)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def write_adapter(run_dir: Path, folder: Path) -> None:
    """The run's PEFT folder as it is, plus the run's tokenizer and chat template beside it."""
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ExportError(f"run {run_dir.name} has no adapter/adapter_model.safetensors (a full fine-tune has "
                          "no adapter)", code="no_adapter", hint="use --format merged for a full fine-tune")
    shutil.copytree(adapter, folder, dirs_exist_ok=True)
    for name in TOKENIZER_FILES:
        if (run_dir / name).is_file() and not (folder / name).exists():
            shutil.copy2(run_dir / name, folder / name)


def reload_adapter(folder: Path, base_ref: str):
    """The exported adapter put on its base with PEFT, in fp32."""
    from peft import PeftModel


    base, tokenizer = load_model(base_ref, dtype="fp32", device="cpu", with_adapter=False)
    model = PeftModel.from_pretrained(base, str(folder))
    model.eval()
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer
