"""Final validation loss, computed the same way for both sides after training, in its own process.

Mean cross-entropy over assistant tokens (content + end-of-turn, tunery's chat encoding) of the
validation split, in fp32, on the base model plus the side's saved PEFT adapter (or full model).
"""

from __future__ import annotations

from pathlib import Path

EVAL_BATCH_SIZE = 8


def validation_loss(model_path: str, val_file: str, *, adapter_dir: str | None = None,
                    model_dir: str | None = None, max_seq_len: int = 2048) -> dict:
    """{"val_loss": mean over trained tokens, "val_tokens": how many} for one trained result."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.data.dataset import load_dataset
    from tunery.data.template import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    from tunery.models.load import LOCAL_ONLY

    model = AutoModelForCausalLM.from_pretrained(model_dir or model_path, dtype=torch.float32, use_safetensors=True,
                                                 **LOCAL_ONLY)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    examples = [encode_conversation(tokenizer, c, max_seq_len=max_seq_len)
                for c in load_dataset(str(Path(val_file)), min_examples=1)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH_SIZE):
            chunk = examples[start:start + EVAL_BATCH_SIZE]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, e in enumerate(chunk):
                ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
                labels[row, :len(e.labels)] = torch.tensor(e.labels)
                mask[row, :len(e.input_ids)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            targets = labels[:, 1:].reshape(-1)
            loss_sum += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets,
                                              ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return {"val_loss": loss_sum / max(count, 1), "val_tokens": count}
