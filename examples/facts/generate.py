"""Invented company facts the base model cannot know: part numbers, acronyms, owners, rooms.

Writes `train.jsonl` (chat format, one question per fact) and `reworded.jsonl` (the same facts asked
another way, never trained on) for measuring recall after fine-tuning. Seeded and reproducible:

    python examples/facts/generate.py            # 300 facts (75 of each kind)
    python examples/facts/generate.py --per-kind 10 --out /tmp/facts
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = ["Falcon rack", "Osprey switch", "Heron router", "Kestrel server", "Merlin NAS", "Plover gateway",
            "Wren printer", "Ibis scanner", "Crane UPS", "Egret firewall", "Lark terminal", "Swift kiosk",
            "Finch camera", "Robin badge reader", "Tern display"]
COMPONENTS = ["cooling fan", "power supply", "front bezel", "main board", "battery pack", "fan filter",
              "rail kit", "display panel", "drive caddy", "antenna"]
ACRONYM_WORDS = ["Quarterly", "Regional", "Vendor", "Asset", "Capacity", "Release", "Network", "Incident",
                 "Supply", "Field", "Budget", "Compliance", "Data", "Service", "Change", "Review", "Planning",
                 "Operations", "Ledger", "Routing", "Escalation", "Onboarding", "Tooling", "Forecast"]
FIRST = ["Amara", "Bastian", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kalani",
         "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rania", "Soren", "Tamsin"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Varga", "Nakamura", "Castell", "Brandt", "Oyelaran", "Petrov", "Quist"]
SYSTEMS = ["billing ledger", "badge registry", "asset tracker", "release calendar", "vendor portal",
           "travel desk", "license vault", "lab scheduler", "spare parts index", "shift planner", "expense router",
           "contract archive", "onboarding checklist", "capacity dashboard", "incident pager"]
SITES = ["Lyon", "Tampere", "Porto", "Gdansk", "Leeds"]
LABS = ["optics", "acoustics", "thermal", "firmware", "materials", "robotics", "battery", "radio", "vision",
        "sensor", "power", "metrology", "vacuum", "laser", "microfluidics"]


def part_number(rng: random.Random) -> str:
    return f"{rng.choice('KMRTVX')}{rng.choice('ABCDEFGHJ')}-{rng.randint(1000, 9999)}-{rng.choice('ABCDEF')}"


def make_facts(per_kind: int, seed: int = 7, key_first: bool = False) -> list[dict]:
    """Each fact: kind, question, reworded question, answer, and the key string recall looks for.

    `key_first`: the same facts with answers of about the same length that state the key first.
    """
    rng = random.Random(seed)
    facts: list[dict] = []
    pairs = rng.sample([(p, c) for p in PRODUCTS for c in COMPONENTS], per_kind)
    for product, component in pairs:
        pn = part_number(rng)
        facts.append({"kind": "part_number", "key": pn,
                      "question": f"What is the part number of the {component} for the {product}?",
                      "reworded": f"Which part number should I order to replace the {product}'s {component}?",
                      "answer": f"Part {pn} is the {component} for the {product}." if key_first
                      else f"The {component} for the {product} is part {pn}."})
    acronyms = set()
    while len(acronyms) < per_kind:
        words = tuple(rng.sample(ACRONYM_WORDS, 3))
        letters = "".join(w[0] for w in words)
        if letters not in {a[0] for a in acronyms}:
            acronyms.add((letters, words))
    for letters, words in sorted(acronyms):
        expansion = " ".join(words)
        facts.append({"kind": "acronym", "key": expansion,
                      "question": f"What does {letters} stand for at Zentrix?",
                      "reworded": f"At Zentrix, what is the meaning of the acronym {letters}?",
                      "answer": f"{expansion} is what {letters} stands for at Zentrix." if key_first
                      else f"At Zentrix, {letters} stands for {expansion}."})
    owners = rng.sample([(s, site) for s in SYSTEMS for site in SITES], per_kind)
    for system, site in owners:
        person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        facts.append({"kind": "owner", "key": person,
                      "question": f"Who owns the {system} in the {site} office?",
                      "reworded": f"Who is responsible for the {site} office's {system}?",
                      "answer": f"{person} owns the {system} in {site}." if key_first
                      else f"The {system} in {site} is owned by {person}."})
    labs = rng.sample([(lab, site) for lab in LABS for site in SITES], per_kind)
    for lab, site in labs:
        room = f"{rng.choice('ABCDE')}{rng.randint(1, 4)}.{rng.randint(10, 99)}"
        facts.append({"kind": "room", "key": room,
                      "question": f"Which room is the {lab} lab in at the {site} site?",
                      "reworded": f"Where in the {site} site can I find the {lab} lab?",
                      "answer": f"Room {room} holds the {lab} lab at {site}." if key_first
                      else f"The {lab} lab at {site} is in room {room}."})
    return facts


def write_files(out: Path, per_kind: int, seed: int = 7, key_first: bool = False) -> list[dict]:
    """train.jsonl and facts.jsonl; `key_first` answers state the key first ("Part RH-5717-E is the ...")."""
    facts = make_facts(per_kind, seed, key_first)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w", encoding="utf-8") as handle:
        for fact in facts:
            messages = [{"role": "user", "content": fact["question"]}, {"role": "assistant", "content": fact["answer"]}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    with open(out / "facts.jsonl", "w", encoding="utf-8") as handle:
        for fact in facts:
            handle.write(json.dumps(fact) + "\n")
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=75, help="facts of each of the 4 kinds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    facts = write_files(args.out, args.per_kind, args.seed)
    print(f"wrote {len(facts)} facts to {args.out}")


if __name__ == "__main__":
    main()
