"""Build an engine from a model reference: the base model, and a LoRA run's adapter on top of it.

Shared by `tunery serve`, `tunery chat` and the serving benchmark so all three load the same way.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.data.template import stop_token_ids
from tunery.inference.backend import decode_choice
from tunery.models import load_model, resolve_model
from tunery.paths import check_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery.inference.engine import Engine
    from tunery.inference.quant import QuantizationReport
    from tunery.models.resolve import ResolvedModel

log = logging.getLogger("tunery.inference")


@dataclass
class LoadedEngine:
    engine: Engine
    tokenizer: PreTrainedTokenizerBase  # for encoding prompts; the engine decodes with its own copy
    resolved: ResolvedModel
    adapter: str | None  # the adapter a LoRA run was loaded as (its run folder name)
    quantization: QuantizationReport

    @property
    def decode_summary(self) -> str:
        """One line for the start banner: which backend decodes, and why."""
        line = self.engine.decode_status
        if self.engine.backend.name == "torch" and self.quantization.weights != "int4":
            line += " (--weights int4 decodes in the compiled fast lane, several times faster)"
        return line


def load_engine(ref: str | Path, *, dtype: str = "auto", weights: str = "full", decode: str | None = None,
                max_batch_size: int = 16, max_adapters: int = 8) -> LoadedEngine:
    """Load `ref` into a (not yet started) engine; a LoRA run comes as its base plus its adapter.

    `weights` is `full`, `int8` or `int4` (see `tunery.inference.quant`); adapters stay in `dtype`.
    Quantized weights are made from the model loaded in fp32 unless `dtype` says otherwise.
    `decode` is `auto`, `torch` or `lane` (see `tunery.inference.backend`; None: TUNERY_DECODE or auto).
    """
    from tunery.inference.calibration import calibration_ids
    from tunery.inference.engine import Engine
    from tunery.inference.quant import check_weight_format, quantize_model

    check_weight_format(weights)
    decode = decode_choice(decode)  # a bad choice fails before the model loads
    resolved = resolve_model(ref)
    if weights != "full" and dtype == "auto":
        # Quantize the checkpoint's own values: `auto` picks bf16 on CPUs with fast bf16, which would
        # round them first (a Q4_1 decoder off its grid); the fast lane computes in fp32 anyway.
        dtype = "fp32"
    model, tokenizer = load_model(resolved, dtype=dtype, with_adapter=False)
    quantization = quantize_model(model, weights, calibration_ids(tokenizer) if weights == "int4" else None)
    log.info("%s", quantization.summary())
    # The engine thread decodes while request handlers encode: each gets its own tokenizer.
    engine = Engine(model, copy.deepcopy(tokenizer), stop_token_ids(tokenizer), decode=decode,
                    max_batch_size=max_batch_size,
                    max_adapters=max_adapters, small_decode_threads=1 if weights != "full" else None)
    adapter = None
    if resolved.adapter_path is not None and resolved.run_dir is not None:  # a run's adapter (the resolver sets both)
        adapter = check_name(resolved.run_dir.name, "adapter name")
        engine.load_adapter(adapter, resolved.adapter_path)
    return LoadedEngine(engine=engine, tokenizer=tokenizer, resolved=resolved, adapter=adapter,
                        quantization=quantization)
