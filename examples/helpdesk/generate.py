"""Generate the helpdesk triage dataset: ticket text in, a JSON triage object out (seeded, reproducible).

    python examples/helpdesk/generate.py            # rewrites train/validation/test.jsonl beside this file
    python examples/helpdesk/generate.py --check    # exits 1 if the files differ from what the seed gives

Tickets combine the issue catalog with people, places, urgency cues, writing styles and typos.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from catalog import ISSUES, SYSTEM_PROMPT, Issue, triage  # noqa: E402

HERE = Path(__file__).parent
SEED = 20261130
SPLIT_SIZES = {"train": 480, "validation": 60, "test": 60}

NAMES = ("Priya", "Tom", "Aisha", "Marek", "Chloe", "Dev", "Sofia", "Kwame", "Hannah", "Luis", "Mei", "Owen",
         "Fatima", "Jonas", "Grace", "Ravi", "Elena", "Sam", "Yusuf", "Ingrid")
DEPARTMENTS = ("finance", "accounts payable", "marketing", "sales", "HR", "legal", "procurement", "customer support",
               "engineering", "logistics")
OFFICES = ("Leeds", "Rotterdam", "Austin", "Pune", "Dublin")
FLOORS = ("2nd floor", "3rd floor", "4th floor", "ground floor")
VIPS = ("the CFO", "our CEO", "the VP of Sales", "the General Counsel", "the COO")
SINCE = ("since this morning", "since yesterday", "after the update last night", "since Monday",
         "for the past hour", "after I changed my password", "since we moved desks", "", "", "")
DETAILS = ("I've already restarted twice.", "Tried turning it off and on again, no luck.", "Running Windows 11.",
           "I'm working from home today.", "Asset tag LT-{n}.", "Ticket ref from last time was INC00{n}.",
           "Screenshot attached.", "It was fine on Friday.", "", "", "")
REQUEST_DETAILS = ("My manager has approved it.", "Cost centre CC-{n}.", "No rush, whenever you can.",
                   "Same as what the rest of my team has.", "", "")
SECURITY_DETAILS = ("I haven't told anyone else yet.", "Should I change my password?", "Not sure what to do next.",
                    "My manager asked me to raise this.", "")
DEADLINES = ("I have a client demo in 30 minutes", "month-end close is today", "board meeting at 2pm and I need this",
             "payroll has to go out by 5pm", "audit deadline is tomorrow morning", "we go live with the customer at noon")
TEAM_SCOPE = ("my whole team ({dept}) has the same problem", "everyone in {dept} is affected",
              "it's not just me, the whole {dept} team is seeing it", "half of {dept} can't work because of this")
SITE_SCOPE = ("the entire {floor} is affected", "nobody at the {office} office can work",
              "all of {office} is seeing this", "every desk on the {floor} has the same issue")
GREETINGS = ("Hi,", "Hello IT,", "hey", "Good morning team,", "Hi Service Desk,", "To whom it may concern,", "", "")
SIGNOFFS = ("Thanks,\n{name}", "Cheers\n{name}", "Regards,\n{name}\n{dept}", "thx", "Sent from my iPhone",
            "{name} ({dept})", "", "")


def make_example(rng: random.Random) -> dict:
    """One ticket and its label; the label follows from the sampled facts, never from the wording."""
    issue = rng.choice(ISSUES)
    name, dept = rng.choice(NAMES), rng.choice(DEPARTMENTS)
    scope = rng.choices(("me", "team", "site"), (6, 3, 2))[0] if issue.widespread else "me"
    urgency = rng.choices(("none", "deadline", "vip"), (7, 2, 1))[0]
    office, floor = rng.choice(OFFICES), rng.choice(FLOORS)
    where = rng.choice((f"the {floor}", f"the {office} office"))
    who = {"me": "one user", "team": f"the {dept} team", "site": where}[scope]
    if urgency == "vip":
        vip = rng.choice(VIPS)
        who = vip if scope == "me" else who
    summary = f"{issue.noun} for {who}" + (" ahead of a deadline" if urgency == "deadline" else "") + "."
    label = {"category": issue.category, "priority": triage(issue, scope, urgency != "none"),
             "team": issue.team, "summary": summary}
    ticket = _write_ticket(rng, issue, name, dept, scope, urgency, office, floor, where,
                           vip if urgency == "vip" else "")
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ticket},
                         {"role": "assistant", "content": json.dumps(label)}]}


def _write_ticket(rng, issue: Issue, name, dept, scope, urgency, office, floor, where, vip) -> str:
    problem = rng.choice(issue.phrasings)
    since = rng.choice(SINCE) if issue.severity in ("blocked", "degraded") else ""
    sentences = [f"{problem} {since}".strip() + "."]
    if vip:
        sentences[0] = f"Raising this on behalf of {vip}: {problem[0].lower()}{problem[1:]} {since}".strip() + "."
    details = {"request": REQUEST_DETAILS, "blocked": DETAILS, "degraded": DETAILS}.get(issue.severity,
                                                                                     SECURITY_DETAILS)
    detail = rng.choice(details).format(n=rng.randint(10000, 99999))
    if detail:
        sentences.append(detail)
    if scope == "team":
        sentences.append(_capitalise(rng.choice(TEAM_SCOPE).format(dept=dept)) + ".")
    elif scope == "site":
        sentences.append(_capitalise(rng.choice(SITE_SCOPE).format(floor=floor, office=office)) + ".")
    if urgency == "deadline":
        deadline = rng.choice(DEADLINES)
        sentences.append(rng.choice((f"Urgent - {deadline}!", f"Please hurry, {deadline}.",
                                     f"{_capitalise(deadline)} so this is time critical.")))
    body = " ".join(sentences)
    if rng.random() < 0.35:
        body = add_typos(rng, body)
    style = rng.choices(("email", "chat", "form"), (5, 3, 2))[0]
    if style == "chat":
        return (body.lower() if rng.random() < 0.6 else body).rstrip(".")
    if style == "form":
        subject = problem.split(",")[0][:60]
        return (f"Short description: {subject}\nDescription: {body}\nReported by: {name} ({dept})\n"
                f"Location: {rng.choice((office, floor, 'remote'))}")
    greeting = rng.choice(GREETINGS)
    signoff = rng.choice(SIGNOFFS).format(name=name, dept=dept)
    return "\n\n".join(part for part in (greeting, body, signoff) if part)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def add_typos(rng: random.Random, text: str, rate: float = 0.08) -> str:
    """Swap, drop or double a letter in some longer words, as hurried typists do."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 4 and word.isalpha() and rng.random() < rate:
            j = rng.randrange(1, len(word) - 2)
            kind = rng.randrange(3)
            if kind == 0:
                word = word[:j] + word[j + 1] + word[j] + word[j + 2:]
            elif kind == 1:
                word = word[:j] + word[j + 1:]
            else:
                word = word[:j] + word[j] + word[j:]
            words[i] = word
    return " ".join(words)


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """The three splits; tickets are unique across all of them."""
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[dict] = []
    total = sum(SPLIT_SIZES.values())
    while len(examples) < total:
        example = make_example(rng)
        ticket = example["messages"][1]["content"]
        if ticket not in seen:
            seen.add(ticket)
            examples.append(example)
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        splits[name] = examples[start:start + size]
        start += size
    return splits


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args()
    for name, rows in generate(args.seed).items():
        path = args.out / f"{name}.jsonl"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != render(rows):
                print(f"{path} differs from the generator's output", file=sys.stderr)
                return 1
        else:
            path.write_text(render(rows), encoding="utf-8")
            print(f"wrote {len(rows)} examples to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
