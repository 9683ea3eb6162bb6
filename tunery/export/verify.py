"""Verify an export: the same fixed prompts through the source and the reloaded export, logits compared.

Both sides compute in fp32, so the difference measures what storing the weights cost (dtype
rounding, quantisation) and nothing else. Tolerances are relative to the largest source logit.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunery.data.template import encode_prompt, encode_text
from tunery.errors import ExportError

# Fixed prompts: chat prompts (through the model's template) and one plain text with digits and
# punctuation, so tokenizer and weights are both exercised.
CHAT_PROMPTS = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer with JSON only."},
     {"role": "user", "content": "The VPN is down for the whole floor since 9:30, ticket #4410."}],
)
TEXT_PROMPT = "Part number TX-4410 is the replacement fan (model 7 rack), 3 units, ~12.5 kg."

# Largest allowed |logit difference| as a fraction of max(1, largest |source logit|).
RELATIVE_TOLERANCE = {"fp32": 1e-4, "f32": 1e-4, "fp16": 1e-2, "f16": 1e-2, "bf16": 3e-2, "q8_0": 1e-1}


@dataclass(frozen=True)
class Verification:
    """The numbers behind "verified": worst logit difference, the tolerance, how much was checked."""

    max_abs_diff: float
    tolerance: float
    num_prompts: int
    num_positions: int
    top1_agreement: float

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "num_prompts": self.num_prompts,
                "num_positions": self.num_positions, "top1_agreement": self.top1_agreement}


def fixed_prompt_ids(tokenizer) -> list[list[int]]:
    """Token ids of the fixed prompts under this tokenizer and its chat template."""
    ids: list[list[int]] = []
    if getattr(tokenizer, "chat_template", None):
        ids.extend(list(encode_prompt(tokenizer, messages)) for messages in CHAT_PROMPTS)
    ids.append(encode_text(tokenizer, TEXT_PROMPT))
    return ids


def compute_logits(model, prompt_ids: list[list[int]]) -> list:
    """fp32 logits of every prompt, one forward each (no padding to blur the comparison)."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
            outputs.append(logits[0].float().cpu())
    return outputs


def check_tokenizer(source_ids: list[list[int]], exported_tokenizer, what: str) -> None:
    """The exported tokenizer must turn the fixed prompts into the very same ids."""
    exported_ids = fixed_prompt_ids(exported_tokenizer)
    if exported_ids != source_ids:
        index = next(i for i, (a, b) in enumerate(zip(source_ids, exported_ids)) if a != b) \
            if len(exported_ids) == len(source_ids) else len(source_ids)
        raise ExportError(f"{what}: the exported tokenizer encodes fixed prompt {index} differently from the "
                          "source (or lost its chat template)", code="export_verification_failed",
                          hint="this tokenizer type may not survive the conversion; use --format merged")


def compare_logits(reference: list, exported: list, dtype: str, what: str) -> Verification:
    """Worst |logit difference| over all prompts and positions; drift beyond tolerance raises."""
    max_diff, max_logit, agree, positions = 0.0, 0.0, 0, 0
    for ref, out in zip(reference, exported):
        if ref.shape != out.shape:
            raise ExportError(f"{what}: logits shape {tuple(out.shape)} differs from the source's "
                              f"{tuple(ref.shape)}", code="export_verification_failed")
        max_diff = max(max_diff, float((ref - out).abs().max()))
        max_logit = max(max_logit, float(ref.abs().max()))
        agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
        positions += ref.shape[0]
    tolerance = RELATIVE_TOLERANCE[dtype] * max(1.0, max_logit)
    result = Verification(max_abs_diff=max_diff, tolerance=tolerance, num_prompts=len(reference),
                          num_positions=positions, top1_agreement=agree / max(positions, 1))
    if not max_diff <= tolerance:  # also catches NaN
        raise ExportError(f"{what} failed verification: max |logit difference| {max_diff:.4g} exceeds the "
                          f"{dtype} tolerance {tolerance:.4g} on the fixed prompts "
                          f"(top-1 agreement {result.top1_agreement:.1%})", code="export_verification_failed",
                          hint="the export was removed; try a wider dtype (fp32/f32) or report this run")
    return result
