"""Stop strings over streamed text: what is emitted, piece by piece, equals the text cut at the first stop."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tunery.inference.stops import TextTracker

ALPHABET = "ab<|>é "


class CharTokenizer:
    """Each token id is one character of ALPHABET; id -1 is half of a multi-byte character."""

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(ALPHABET[i] if i >= 0 else "" for i in ids)
        return text + ("\ufffd" if ids and ids[-1] == -1 else "")


def run(ids, stops):
    tracker, pieces = TextTracker(CharTokenizer(), tuple(stops)), []
    for token in ids:
        pieces.append(tracker.add(token))
        if tracker.stopped:
            break
    pieces.append(tracker.flush())
    return "".join(pieces), tracker.stopped, pieces


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(ALPHABET) - 1), max_size=30),
       st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3))
@example(ids=[6, 3], stops=["|", " |"])  # two stops completed by one token: cut before the earlier-starting one
def test_emitted_text_is_the_text_before_the_first_stop(ids, stops):
    full = "".join(ALPHABET[i] for i in ids)
    cuts = [full.find(s) for s in stops if s in full]
    # A stop is detected as soon as it is complete, so the cut is at the earliest-ending stop's start.
    text, stopped, _ = run(ids, stops)
    if not cuts:
        assert text == full and not stopped
    else:
        assert stopped
        ends = min(full.find(s) + len(s) for s in stops if s in full)
        assert text == full[: min(full.find(s) for s in stops if s in full and full.find(s) + len(s) <= ends)]


def test_possible_stop_prefixes_are_held_back_then_released():
    # "<|" could start the stop "<|>": held back until "a" proves it is not one.
    _, _, pieces = run([0, 2, 3, 0], ["<|>"])
    assert pieces[:4] == ["a", "", "", "<|a"]


def test_a_split_character_is_not_emitted_half_way():
    tracker = TextTracker(CharTokenizer())
    assert tracker.add(0) == "a"
    assert tracker.add(-1) == ""  # incomplete character: nothing yet
    assert tracker.add(5) == "é"
