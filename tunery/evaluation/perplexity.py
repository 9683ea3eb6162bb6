"""Loss and perplexity of a model on any dataset file tunery reads (the trained tokens only).

Examples go through `tunery.data` exactly as in training (same template, same loss mask) and the
loss is training's reference loss (`tunery.training.batch_loss`), so a run's validation loss and
this number agree on the same data.
"""

from __future__ import annotations

import math
from pathlib import Path

from tunery.data.dataset import load_dataset
from tunery.data.template import encode_conversation


def read_loss_data(data_path: str | Path) -> list:
    """The dataset's conversations; bad files fail here, before any model is loaded."""
    return load_dataset(data_path, min_examples=1)


def evaluate_loss(model, tokenizer, data_path: str | Path, *, batch_size: int = 8,
                  max_seq_len: int = 2048, conversations: list | None = None) -> dict:
    """Mean next-token cross-entropy over trained tokens, its perplexity, and the counts."""
    import torch

    from tunery.data.packing import pad_examples
    from tunery.training.batch_loss import reference_loss

    if conversations is None:
        conversations = read_loss_data(data_path)
    examples = [encode_conversation(tokenizer, conv, max_seq_len=max_seq_len) for conv in conversations]
    examples = [e for e in examples if e.num_trained > 0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss_sum, num_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            sums = reference_loss(model, pad_examples(examples[start:start + batch_size], pad_id))
            loss_sum += float(sums.loss_sum)
            num_tokens += sums.num_tokens
    loss = loss_sum / num_tokens if num_tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if num_tokens else float("nan"),
            "num_tokens": num_tokens, "num_examples": len(examples), "data": str(data_path)}
