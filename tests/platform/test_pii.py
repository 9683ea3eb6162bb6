"""PII scrubbing: recall on a generated corpus of planted items, precision on the bundled examples."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

from tunery.errors import ConfigError
from tunery.platform.pii import Scrubber, iban_valid, load_pii_patterns, luhn_valid

ROOT = Path(__file__).resolve().parents[2]


def card_number(rng: random.Random) -> str:
    prefix = rng.choice(["4", "51", "55", "37", "6011"])
    length = 15 if prefix == "37" else 16
    digits = [int(c) for c in prefix] + [rng.randrange(10) for _ in range(length - len(prefix) - 1)]
    for check in range(10):
        if luhn_valid("".join(map(str, digits + [check]))):
            number = "".join(map(str, digits + [check]))
            break
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4))


def iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24)])
    bban = "".join(rng.choice(string.digits + (string.ascii_uppercase if country in ("GB", "NL") else ""))
                   for _ in range(length - 4))
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + bban[4:]
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    value = f"{country}{check:02d}{bban}"
    assert iban_valid(value)
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice([f"+1 {d(3)} {d(3)} {d(4)}", f"+44 20 {d(4)} {d(4)}", f"+49 30 {d(8)}", f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
                       f"({d(3)}) {d(3)}-{d(4)}", f"{d(3)}-{d(3)}-{d(4)}", f"030 {d(4)} {d(4)}", f"06 {d(2)} {d(2)} {d(2)} {d(2)}",
                       f"+91 {d(5)} {d(5)}", f"+81-3-{d(4)}-{d(4)}", f"020 {d(4)} {d(4)}"])


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    r = lambda n, chars=alnum: "".join(rng.choice(chars) for _ in range(n))  # noqa: E731
    return rng.choice([f"sk-{r(40)}", f"sk-proj-{r(48)}", f"ghp_{r(36)}", f"AKIA{r(16, string.ascii_uppercase + string.digits)}",
                       f"xoxb-{r(12, string.digits)}-{r(24)}", r(32), r(40, string.hexdigits[:16])])


def planted(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["EMAIL", "PHONE", "CARD", "IBAN", "IP4", "IP6", "SSN", "SECRET"])
    name = rng.choice(["anna.kowalski", "j.smith", "li_wei", "omar+billing", "m.dupont", "priya.r"])
    value = {
        "EMAIL": lambda: f"{name}@{rng.choice(['example.com', 'corp.example.org', 'mail.co.uk'])}",
        "PHONE": lambda: phone(rng),
        "CARD": lambda: card_number(rng),
        "IBAN": lambda: iban(rng),
        "IP4": lambda: ".".join(str(rng.choice([n for n in range(1, 255) if n != 127]) if i == 0 else rng.randrange(256))
                                for i in range(4)),  # 127.x is loopback: nobody's address
        "IP6": lambda: rng.choice(["2001:db8::", "fe80::"]) + ":".join(f"{rng.randrange(65536):x}" for _ in range(3)),
        "SSN": lambda: f"{rng.randrange(100, 665):03d}-{rng.randrange(10, 99):02d}-{rng.randrange(1000, 9999):04d}",
        "SECRET": lambda: secret(rng),
    }[kind]()
    return kind, value


TEMPLATES = [
    "Please contact me at {} if the VPN drops again.",
    "My card {} was charged twice for the licence.",
    "Send the refund to {}, thanks!",
    "The server at {} stopped answering pings after the update.",
    "Here is the key I used: {} (it worked yesterday).",
    "Call {} between 9 and 5.",
    "Employee record: SSN {}, department finance.",
    "{} is what the form asked for.",
    "Can you check why {} keeps failing?",
    "Details: {}.",
    "I pasted {} into the config by mistake",
    "(reference {})",
]


def test_planted_items_are_removed(tmp_path):
    rng = random.Random(13)
    scrubber = Scrubber()
    total, removed, typed = 0, 0, 0
    for _ in range(400):
        items = [planted(rng) for _ in range(rng.randint(1, 3))]
        text = " ".join(rng.choice(TEMPLATES).format(value) for _, value in items)
        out = scrubber.scrub(text)
        for kind, value in items:
            total += 1
            removed += value not in out
            typed += f"<{'IP' if kind.startswith('IP') else kind}_" in out
    assert removed / total >= 0.99, f"{removed}/{total} removed"
    assert typed / total >= 0.97


def _tokens(text: str) -> list[str]:
    return text.split()


def test_bundled_examples_are_left_alone():
    scrubber = Scrubber()
    tokens = changed = 0
    for path in sorted((ROOT / "examples").glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for message in json.loads(line).get("messages", []):
                before, after = _tokens(message["content"]), _tokens(scrubber.scrub(message["content"]))
                tokens += len(before)
                changed += sum(a != b for a, b in zip(before, after, strict=False)) + abs(len(before) - len(after))
    assert tokens > 10_000
    assert changed / tokens <= 0.01, f"{changed}/{tokens} tokens changed"


def test_same_value_same_placeholder_within_one_example():
    result = Scrubber().scrub_example([
        "Mail Anna.K@example.com or bob@example.com, card 4111 1111 1111 1111",
        "Yes, anna.k@example.com is right; card 4111-1111-1111-1111 too",
    ])
    assert result.texts == ["Mail <EMAIL_1> or <EMAIL_2>, card <CARD_1>",
                            "Yes, <EMAIL_1> is right; card <CARD_1> too"]
    assert result.found == {"EMAIL": 3, "CARD": 2}
    assert Scrubber().scrub("again bob@example.com") == "again <EMAIL_1>"  # numbering restarts per example


def test_checksums_and_near_misses():
    scrubber = Scrubber()
    assert scrubber.scrub("card 4111 1111 1111 1112") == "card 4111 1111 1111 1112"  # fails Luhn
    assert scrubber.scrub("IBAN DE89 3704 0044 0532 0130 00") == "IBAN <IBAN_1>"
    assert "<IBAN" not in scrubber.scrub("IBAN DE88 3704 0044 0532 0130 00")  # fails mod 97
    assert scrubber.scrub("ip 10.0.0.256 and version 1.2.3") == "ip 10.0.0.256 and version 1.2.3"
    assert scrubber.scrub("at ::1 and 2001:db8::ff00:42:8329") == "at ::1 and <IP_1>"
    assert scrubber.scrub("part RH-5717-E on 2026-01-31") == "part RH-5717-E on 2026-01-31"


def test_user_patterns_from_a_file(tmp_path):
    path = tmp_path / "pii.yaml"
    path.write_text("patterns:\n  EMPLOYEE_ID: 'EMP-\\d{6}'\n")
    scrubber = Scrubber(load_pii_patterns(path))
    assert scrubber.scrub("badge EMP-123456, mail a@b.io") == "badge <EMPLOYEE_ID_1>, mail <EMAIL_1>"
    path.write_text("patterns:\n  EMPLOYEE_ID: 'EMP-(\\d'\n")
    with pytest.raises(ConfigError, match=r"pii.yaml: pattern EMPLOYEE_ID: .* not a valid regular expression"):
        load_pii_patterns(path)
    path.write_text("patterns:\n  bad name: 'x'\n")
    with pytest.raises(ConfigError, match="upper-case"):
        load_pii_patterns(path)


def test_feedback_export_scrubs_examples_and_pairs(tmp_path):
    from typer.testing import CliRunner

    from tunery.cli import _register, app
    from tunery.store import open_store
    from tunery.store.owners import LOCAL_OWNER
    from tunery.store.requests import LoggedCompletion, log_completion, record_feedback

    store = open_store()
    question = "My card 4111 1111 1111 1111 was refused, mail me at ana@example.com"
    log_completion(store, LoggedCompletion(id="c1", model="m", kind="chat", messages=[{"role": "user", "content": question}],
                                           outputs=["Call ana@example.com"], finish_reason="stop", prompt_tokens=3,
                                           completion_tokens=2, latency_ms=1))
    record_feedback(store, LOCAL_OWNER, "c1", -1, correction="We emailed ana@example.com about card 4111111111111111.")
    _register()
    out, pairs = tmp_path / "fb.jsonl", tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["feedback", "export", "--out", str(out), "--pairs", str(pairs)])
    assert result.exit_code == 0, result.output
    example = json.loads(out.read_text())
    assert example["messages"] == [
        {"role": "user", "content": "My card <CARD_1> was refused, mail me at <EMAIL_1>"},
        {"role": "assistant", "content": "We emailed <EMAIL_1> about card <CARD_1>."}]
    pair = json.loads(pairs.read_text())
    assert pair["non_preferred_output"][0]["content"] == "Call <EMAIL_1>"
    assert "ana@" not in out.read_text() + pairs.read_text()
