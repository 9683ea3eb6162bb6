"""Tiny training data and job settings for the platform tests (fast on the tiny model)."""

import json


def chat_lines(n: int = 12) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: the printer on floor {i} is offline"},
                          {"role": "assistant", "content": f"{{\"category\": \"hardware\", \"floor\": {i}}}"}]}
            for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


TINY_TUNERY = {"train": {"max_steps": 4, "batch_size": 2, "save_every_steps": 2, "threads": 1},
               "data": {"max_seq_len": 64, "val_fraction": 0.0}, "lora": {"rank": 4}}


def tiny_job_body(model: str, file_id: str, **extra) -> dict:
    return {"model": model, "training_file": file_id, "suffix": "helpdesk",
            "tunery": json.loads(json.dumps(TINY_TUNERY)), **extra}
