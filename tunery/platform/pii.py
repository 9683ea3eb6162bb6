"""PII scrubbing: personal data and secrets in logged text become typed placeholders (`<EMAIL_1>`).

Patterns with a checksum where one exists (Luhn for cards, ISO 13616 mod-97 for IBANs, the address
parser for IPv6), known key prefixes and high-entropy tokens for secrets, and the user's own named
patterns. Within one example the same value always gets the same placeholder. Pure Python, no
model, no network: it knows text, not where the text is stored.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunery.config import read_yaml_mapping
from tunery.errors import ConfigError

_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")  # fullmatch: `$` would pass "NAME\n"


@dataclass(frozen=True)
class Detector:
    """One kind of PII: a candidate pattern, an optional check of the match, and how values compare."""

    kind: str
    pattern: re.Pattern
    check: Callable[[str], bool] | None = None
    normalise: Callable[[str], str] = str


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _compact(text: str) -> str:
    return re.sub(r"[\s-]", "", text).upper()


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in _digits(number)]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    iban = _compact(text)
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ip_personal(text: str) -> bool:
    """A valid address that can point at someone (loopback and unspecified addresses cannot)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def phone_valid(text: str) -> bool:
    return 7 <= len(_digits(text)) <= 15


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def high_entropy(token: str) -> bool:
    """A long random-looking token: letters and digits mixed, and close to uniform characters."""
    classes = sum(bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    if re.fullmatch(r"[0-9a-f]{32,}", token):  # hex keys and tokens
        return shannon_entropy(token) >= 3.0
    return classes >= 3 and shannon_entropy(token) >= 3.7


_SECRET_PREFIXES = (
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}",            # OpenAI, Anthropic
    r"gh[pousr]_[A-Za-z0-9]{30,}", r"github_pat_[A-Za-z0-9_]{30,}",  # GitHub
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",                       # AWS access key ids
    r"xox[abposr]-[A-Za-z0-9-]{10,}",                   # Slack
    r"AIza[0-9A-Za-z_-]{35}",                            # Google
    r"glpat-[A-Za-z0-9_-]{20,}",                         # GitLab
    r"tny_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}",              # tunery's own API keys
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)

# Order matters: an earlier detector wins a tie between overlapping matches of equal length.
DETECTORS: tuple[Detector, ...] = (
    Detector("SECRET", re.compile(r"(?<![\w-])(?:" + "|".join(_SECRET_PREFIXES) + r")(?![\w-])")),
    Detector("EMAIL", re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b"),
             normalise=str.lower),
    Detector("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_valid, _compact),
    Detector("CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), luhn_valid, _digits),
    Detector("SSN", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"),
             normalise=_digits),
    Detector("IP", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                              r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)"), ip_personal),
    Detector("IP", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), ip_personal, str.lower),
    Detector("PHONE", re.compile(
        r"(?<![\w+])(?:"
        r"\+\d{1,3}[\s.-]?(?:\(0?\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"  # +44 20 7946 0958
        r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"                                                # (415) 555-0132
        r"|\d{3}[.-]\d{3}[.-]\d{4}"                                                     # 415-555-0132
        r"|0\d{1,4}(?:[\s/-]\d{2,4}){2,4}"                                              # 030 1234 5678, 06 12 34 56 78
        r")(?![\w-])"), phone_valid, _digits),
    Detector("SECRET", re.compile(r"(?<![\w/+=-])[A-Za-z0-9_+/=-]{24,}(?![\w/+=-])"), high_entropy),
)


@dataclass
class ScrubResult:
    """Scrubbed texts of one example, and how many values of each kind were replaced."""

    texts: list[str]
    found: Counter = field(default_factory=Counter)


class Scrubber:
    """Built-in detectors plus named user patterns; `scrub_example` keeps placeholders consistent."""

    def __init__(self, patterns: dict[str, str] | None = None, *, source: str = "pii patterns"):
        user = tuple(_user_detector(name, regex, source) for name, regex in (patterns or {}).items())
        self.detectors = user + DETECTORS  # the user's patterns win overlaps: they know their data

    def scrub_example(self, texts: Iterable[str]) -> ScrubResult:
        """Scrub the texts of one example (a prompt, its answers, a correction) with one placeholder table."""
        table: dict[tuple[str, str], str] = {}
        result = ScrubResult([])
        for text in texts:
            result.texts.append(self._scrub(text, table, result.found) if text else text)
        return result

    def scrub(self, text: str) -> str:
        return self.scrub_example([text]).texts[0]

    def _scrub(self, text: str, table: dict, found: Counter) -> str:
        spans = []
        for order, detector in enumerate(self.detectors):
            for match in detector.pattern.finditer(text):
                value = match.group(0)
                if detector.check is None or detector.check(value):
                    spans.append((match.start(), -(match.end() - match.start()), order, match.end(), detector))
        out, position = [], 0
        for start, _, _, end, detector in sorted(spans):
            if start < position:
                continue  # overlaps a longer or earlier match already replaced
            value = text[start:end]
            key = (detector.kind, detector.normalise(value))
            if key not in table:
                number = sum(1 for kind, _ in table if kind == detector.kind) + 1
                table[key] = f"<{detector.kind}_{number}>"
            found[detector.kind] += 1
            out.append(text[position:start])
            out.append(table[key])
            position = end
        out.append(text[position:])
        return "".join(out)


def _user_detector(name: str, regex: str, source: str) -> Detector:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{source}: pattern name {name!r} must be upper-case letters, digits and _ (e.g. EMPLOYEE_ID)",
                          code="invalid_pii_pattern")
    try:
        pattern = re.compile(regex)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"{source}: pattern {name}: {regex!r} is not a valid regular expression: {exc}",
                          code="invalid_pii_pattern") from None
    if pattern.match(""):
        raise ConfigError(f"{source}: pattern {name} matches the empty string", code="invalid_pii_pattern")
    return Detector(name, pattern)


def load_pii_patterns(path: str | Path | None) -> dict[str, str]:
    """User patterns from a YAML file: `patterns: {EMPLOYEE_ID: 'EMP-\\d{6}'}` (none when path is None)."""
    if path is None:
        return {}

    raw = read_yaml_mapping(Path(path))
    unknown = set(raw) - {"patterns"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}", code="invalid_pii_pattern",
                          hint="the file holds `patterns:` mapping NAME to a regular expression")
    patterns = raw.get("patterns") or {}
    if not isinstance(patterns, dict) or not all(isinstance(v, str) for v in patterns.values()):
        raise ConfigError(f"{path}: patterns must map names to regular-expression strings", code="invalid_pii_pattern")
    Scrubber(patterns, source=str(path))  # validate now, naming the file
    return patterns


def scrub_messages(scrubber: Scrubber, messages: list[dict], outputs: list[str]) -> tuple[list[dict], list[str], Counter]:
    """A logged request's messages and answers scrubbed together (one placeholder table)."""
    contents = [content if isinstance(content := m.get("content"), str) else "" for m in messages]
    result = scrubber.scrub_example(contents + list(outputs))
    scrubbed = [{**m, "content": text} if isinstance(m.get("content"), str) else m
                for m, text in zip(messages, result.texts[:len(messages)], strict=True)]
    return scrubbed, result.texts[len(messages):], result.found
