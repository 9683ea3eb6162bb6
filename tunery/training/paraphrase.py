"""Rewordings by the base model itself (`data.augment: model`): each training question paraphrased.

The model is asked greedily with a few generic examples (tunery.data.augment.paraphrase_prompt); which
replies are kept is augment.accept_paraphrase's decision. Knows nothing of training beyond the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tunery.data.augment import paraphrase_prompt
from tunery.evaluation.generation import generate_texts
from tunery.models import ResolvedModel, load_model

PARAPHRASE_BATCH = 16


def model_paraphraser(source: ResolvedModel, tokenizer, device: str) -> Callable[[Sequence[str]], dict[str, str]]:
    """A function from questions to the base model's replies (question -> reply), loading the model on first use."""

    def paraphrase(questions: Sequence[str]) -> dict[str, str]:
        import torch

        if not questions:
            return {}
        model, _ = load_model(source, dtype="auto", device=device, with_adapter=False)
        prompts = [paraphrase_prompt(q) for q in questions]
        longest = max(len(tokenizer(q)["input_ids"]) for q in questions)
        with torch.no_grad():
            replies = generate_texts(model, tokenizer, prompts, max_new_tokens=2 * longest + 8,
                                     batch_size=PARAPHRASE_BATCH)
        del model
        return {q: r.text for q, r in zip(questions, replies, strict=True)}

    return paraphrase
