"""Train on the invented facts with all-`auto` settings, then measure recall.

Recall = the share of questions whose greedy answer is exactly the trained answer (and, looser,
contains the fact's key string); asked both as trained and reworded (never trained).

    python examples/facts/measure.py                      # the committed 300 facts
    python examples/facts/measure.py --per-kind 10 train.max_steps=20
    python examples/facts/measure.py --per-kind 3 --key-first data.augment=none   # one lever at a time
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import write_files  # noqa: E402


def answer(model, tokenizer, questions: list[str]) -> list[str]:
    from tunery.evaluation.generation import generate_texts

    prompts = [[{"role": "user", "content": q}] for q in questions]
    return [g.text.strip() for g in generate_texts(model, tokenizer, prompts, max_new_tokens=40, batch_size=16)]


def recall(model, tokenizer, facts: list[dict], field: str) -> dict:
    answers = answer(model, tokenizer, [f[field] for f in facts])
    exact = sum(a == f["answer"] for a, f in zip(answers, facts, strict=True))
    key = sum(f["key"] in a for a, f in zip(answers, facts, strict=True))
    return {"exact": exact / len(facts), "key": key / len(facts), "n": len(facts),
            "examples": [{"q": f[field], "expected": f["answer"], "got": a} for a, f in zip(answers[:3], facts[:3], strict=True)]}


def train_and_measure(data_dir: Path, overrides: list[str], base_model: str | None = None, quiet: bool = False) -> dict:
    import torch

    import tunery
    from tunery.config import load_train_config
    from tunery.models import load_model

    extra = [f"base_model={base_model}"] if base_model else []
    config = load_train_config(HERE / "train.yaml", [f"data.train={data_dir / 'train.jsonl'}", *extra, *overrides])
    facts = [json.loads(line) for line in (data_dir / "facts.jsonl").read_text().splitlines()]
    started = time.time()
    result = tunery.train(config, quiet=quiet)
    train_s = time.time() - started
    model, tokenizer = load_model(str(result.run_dir), dtype="fp32", device="cpu")
    with torch.no_grad():
        trained = recall(model, tokenizer, facts, "question")
        reworded = recall(model, tokenizer, facts, "reworded")
    run = json.loads((result.run_dir / "run.json").read_text())
    return {"facts": len(facts), "train_s": round(train_s, 1), "steps": result.steps,
            "auto": {c["key"]: c["value"] for c in run["auto_choices"]}, "tokens_per_s": result.metrics.get("tokens_per_s"),
            "recall_trained": trained, "recall_reworded": reworded, "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=None, help="generate this many facts per kind instead")
    parser.add_argument("--key-first", action="store_true",
                        help="answers state the key first (a lever to measure; generates the facts anew)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args()
    data_dir = HERE
    if args.per_kind or args.key_first:
        data_dir = Path(tempfile.mkdtemp(prefix="facts-"))
        write_files(data_dir, args.per_kind or 75, key_first=args.key_first)
    print(json.dumps(train_and_measure(data_dir, args.overrides), indent=2))


if __name__ == "__main__":
    main()
