"""Model folders that transformers 4.x and 5.x read the same way, and what a folder's base is called.

transformers 5 writes rope settings only as `rope_parameters` and names its tokenizer class
`TokenizersBackend`; 4.x then silently falls back to rope_theta 10,000 and cannot build the
tokenizer. This module adds the fields both versions read; it knows nothing of training or export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The tokenizer class both major versions know (5.x maps it onto its own backend).
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend"}


def portable_config(config: dict) -> dict:
    """`config` with 4.x's `rope_theta` (and `rope_scaling` for non-default rope) beside `rope_parameters`."""
    out = dict(config)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "full_attention" not in rope:
        if "rope_theta" in rope and "rope_theta" not in out:
            out["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default" and not out.get("rope_scaling"):
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    return out


def portable_tokenizer_config(config: dict) -> dict:
    """`config` naming a tokenizer class 4.x can instantiate from tokenizer.json."""
    out = dict(config)
    if out.get("tokenizer_class") in V5_ONLY_TOKENIZER_CLASSES:
        out["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    return out


def make_folder_portable(folder: Path) -> None:
    """Rewrite config.json and tokenizer_config.json in `folder` (when present) for 4.x and 5.x alike."""
    for name, fix in (("config.json", portable_config), ("tokenizer_config.json", portable_tokenizer_config)):
        path = Path(folder) / name
        if not path.is_file():
            continue
        original = json.loads(path.read_text(encoding="utf-8"))
        fixed = fix(original)
        if fixed != original:
            write_json_atomic(path, fixed)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def base_hub_id(ref: str | None) -> str | None:
    """The Hugging Face hub id of a base model reference, when one is known (built-ins, hub ids)."""
    from tunery.models.builtin import BUILTIN_MODELS
    from tunery.models.resolve import looks_like_hub_id

    if not ref:
        return None
    if ref in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref].hub_id
    if looks_like_hub_id(ref):
        return ref
    return None


def base_license(ref: str | None) -> str | None:
    """The licence of a base model when tunery knows it (built-ins) or its folder's model card says it."""
    from tunery.models.builtin import BUILTIN_MODELS

    if ref in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref].license
    if ref and Path(ref).is_dir():
        return card_field(Path(ref) / "README.md", "license")
    return None


def card_field(readme: Path, key: str) -> str | None:
    """One top-level `key: value` of a model card's YAML front matter."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    for line in text.split("\n---", 1)[0].splitlines()[1:]:
        name, _, value = line.partition(":")
        if name.strip() == key and value.strip():
            return value.strip().strip("'\"")
    return None
