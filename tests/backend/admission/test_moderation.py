"""Banned words: the evasions that are undone, the whole-word rule, multi-word entries, flags
and numbers that stay numbers, long prompts and long lists. Pure: no store, no loop."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backend.admission.moderation import (
    LEET,
    LOOKALIKES,
    BannedMatch,
    BannedWords,
    normalise,
    normalise_entry,
)

ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u180e")

# Written out here rather than read from the module, so that a table that loses a letter fails.
CYRILLIC = {
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
}  # fmt: skip
GREEK = {
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
}  # fmt: skip
CAPITALS = {"А": "a", "В": "b", "Е": "e", "Н": "h", "Α": "a", "Β": "b", "Η": "h", "Μ": "m"}
LATIN = {"ɡ": "g", "ɑ": "a", "ı": "i"}
DIGITS = {"0": "o", "1": "i", "3": "e", "@": "a", "$": "s", "4": "a", "5": "s", "7": "t"}

LOOKS_LIKE: dict[str, list[str]] = {}
for table in (CYRILLIC, GREEK, LATIN, DIGITS):
    for fake, letter in table.items():
        LOOKS_LIKE.setdefault(letter, []).append(fake)

PROMPT = "a watercolour of {} at dusk, soft light --ar 16:9 --seed 42"


def found(entries: list[str], text: str) -> str | None:
    """The normalised entry `text` is refused for, or None."""
    match = BannedWords(entries).find(text)
    return None if match is None else match.entry


# --------------------------------------------------------------------------- normalise


def test_lookalike_table_holds_every_listed_homoglyph() -> None:
    """Every listed Cyrillic, Greek and Latin look-alike, small and capital, reads as its letter."""
    expected = CYRILLIC | GREEK | LATIN | CAPITALS
    assert {fake: normalise(fake) for fake in expected} == expected
    assert all(normalise(fake) == letter.lower() for fake, letter in LOOKALIKES.items())


def test_leet_table_is_read_inside_words_only() -> None:
    """Leet digits and symbols are letters inside a word, but a lone number stays a number."""
    assert normalise("h3ll0 w0r1d @$$ 4x7") == "hello worid ass axt"
    assert all(normalise(f"x{fake}x") == f"x{letter}x" for fake, letter in LEET.items())
    assert normalise("--seed 13 --ar 16:9 $5 1.5") == "--seed 13 --ar 16:9 $5 1.5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b\u200ba\u200dd\ufeff", "bad"),
        ("s\u00adpoon", "spoon"),
        ("bàd spöön", "bad spoon"),
        ("ｂａｄ", "bad"),
        ("𝐛𝐚𝐝", "bad"),
        ("ⓑⓐⓓ", "bad"),
        ("🅱ad", "bad"),
        ("BaD", "bad"),
        ("STRASSE Straße", "strasse strasse"),
        ("a\u3164b", "ab"),
    ],
)
def test_normalise_undoes_invisible_accented_wide_and_cased_letters(
    text: str, expected: str
) -> None:
    """Zero-width and format characters, accents, compatibility forms and case are undone."""
    assert normalise(text) == expected


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    """Normalising a normalised text changes nothing, whatever the characters."""
    once = normalise(text)
    assert normalise(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="".join(LOOKALIKES) + "".join(LEET) + "aZ09 .-\u200b\u0301Ｋ", max_size=40))
def test_normalise_is_idempotent_on_lookalikes_and_leet(text: str) -> None:
    """Idempotent too on text made of the very characters the tables rewrite."""
    once = normalise(text)
    assert normalise(once) == once


# --------------------------------------------------------------------------- entries


def test_entries_are_normalised_like_prompts() -> None:
    """An entry is folded, unmasked and decoded; its whitespace separates its words."""
    assert normalise_entry("  Two\t\nWORDS ") == "two words"
    assert normalise_entry("b@d") == "bad"
    assert normalise_entry("Вàd") == "bad"
    assert normalise_entry("t-shirt") == "tshirt"


@pytest.mark.parametrize("entry", ["", "   ", "\u200b\u200d", "...", "-- --", "\u0301"])
def test_an_entry_of_nothing_is_refused(entry: str) -> None:
    """An entry with no letter or digit left is a ValueError, at once and in the list."""
    with pytest.raises(ValueError, match="no letters or digits"):
        normalise_entry(entry)
    with pytest.raises(ValueError, match="no letters or digits"):
        BannedWords(["fine", entry])


def test_the_list_counts_distinct_normalised_entries() -> None:
    """Spellings of one entry count once."""
    assert len(BannedWords(["Bad", "bad", "b.a.d", "ВAD", "two words", "Two, Words"])) == 2
    assert len(BannedWords([])) == 0


def test_an_empty_list_refuses_nothing() -> None:
    """With no entries, no prompt is refused."""
    assert BannedWords([]).find("anything at all, b.a.d included") is None


# --------------------------------------------------------------------------- evasions


@pytest.mark.parametrize(
    "word",
    [
        "bad",
        "BAD",
        "bAd",
        "b\u200bad",
        "b\u200da\u200dd",
        "\ufeffbad",
        "b\u00adad",
        "bаd",  # Cyrillic a
        "ВАD",  # Cyrillic capitals
        "βαd",  # Greek small beta and alpha
        "ΒΑD",  # Greek capitals
        "b@d",
        "b4d",
        "bàd",
        "b\u0301a\u0308d\u0327",
        "ｂａｄ",
        "ＢＡＤ",
        "𝐛𝐚𝐝",
        "b.a.d",
        "b-a-d",
        "b_a_d",
        "b*a*d",
        "b..a--d",
        "b.ad",
        "b a d",
        "b. a. d.",
        "b!a!d",
        "b|a|d",
        "bad!",
        "b@d!",
        "|bad|",
        "(bad)",
        '"bad"',
        "bad's",
    ],
)
def test_evasions_of_a_banned_word_are_found(word: str) -> None:
    """Each disguise of "bad" inside a prompt is still refused for "bad"."""
    assert found(["bad"], PROMPT.format(word)) == "bad"


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ("spoon", "$p00n"),
        ("spoon", "5p00n"),
        ("spoon", "s.p.0.0.n"),
        ("spoon", "ѕрооn"),
        ("toast", "7oa$t"),
        ("apple", "@pple"),
        ("leet", "l33t"),
        ("bell", "b3|l"),
        ("ass", "@ss!"),
        ("big", "b!g!"),
        ("nine", "ηιηε"),
        ("hello", "ΗΕLLO"),
        ("ok", "🇴🇰"),
    ],
)
def test_leet_and_lookalike_spellings_are_found(entry: str, text: str) -> None:
    """Leet digits and symbols, Greek and regional-indicator letters spell the entry."""
    assert found([entry], PROMPT.format(text)) == entry


@pytest.mark.parametrize(
    "text",
    [
        "a badge on a bandana",
        "the abad monastery",
        "badly drawn, badass, baddie",
        "b.adge and ba-dge",
        "ba d",
        "b ad",
        "bad4",
        "8ad",
    ],
)
def test_a_banned_word_is_matched_whole_only(text: str) -> None:
    """ "bad" is not found inside a longer word, nor in letters split by whitespace."""
    assert found(["bad"], text) is None


def test_punctuation_cuts_words_so_a_hyphenated_part_is_found() -> None:
    """A banned word that is one part of a hyphenated or dotted token is a whole word."""
    assert found(["bad"], "a bad-tempered cat") == "bad"
    assert found(["bad"], "file.bad.png") == "bad"


def test_spaced_letters_are_joined_but_longer_words_are_not() -> None:
    """Letters spelt out one by one join; "pen is" stays two words."""
    assert found(["penis"], "the pen is red") is None
    assert found(["penis"], "draw a p e n i s") == "penis"


def test_the_match_names_the_entry_and_the_text_it_matched() -> None:
    """The match carries the normalised entry and the normalised text, for the log."""
    match = BannedWords(["Bad"]).find("a very B.À.D idea")
    assert match == BannedMatch(entry="bad", matched="b.a.d")


def test_the_first_match_in_the_text_is_reported() -> None:
    """Of several entries, the one the text reaches first is the one reported."""
    assert found(["zebra", "apple"], "an apple and a zebra") == "apple"


# --------------------------------------------------------------------------- multi-word


@pytest.mark.parametrize(
    "text",
    [
        "two words",
        "some two   words here",
        "Two\nWords",
        "two, words",
        "two-words",
        "two_words",
        "two... words!",
        "t.w.o w.o.r.d.s",
        "тwo wоrds",
    ],
)
def test_a_multi_word_entry_matches_its_words_in_order(text: str) -> None:
    """The words of an entry follow each other with any whitespace or punctuation between."""
    assert found(["two words"], text) == "two words"


@pytest.mark.parametrize("text", ["twowords", "words two", "two big words", "two wordsmith"])
def test_a_multi_word_entry_needs_its_whole_words_in_order(text: str) -> None:
    """Joined, reordered, separated or longer words do not match a multi-word entry."""
    assert found(["two words"], text) is None


def test_a_multi_word_entry_and_its_first_word_are_both_found() -> None:
    """An entry that begins another one is found on its own and the longer one with it."""
    words = BannedWords(["red", "red sky at night"])
    assert words.find("red sky at dawn") == BannedMatch("red", "red")
    assert BannedWords(["red sky at night"]).find("a red sky at night") == BannedMatch(
        "red sky at night", "red sky at night"
    )


# --------------------------------------------------------------------------- numbers, flags


def test_flags_and_numbers_never_read_as_short_words() -> None:
    """Digits in numbers, ratios and flags stay digits, so "13" never matches "ie"."""
    entries = ["ie", "io", "eo", "ea", "oi", "ioo", "sie", "oo", "ts", "iie", "tso", "es", "ae"]
    prompt = (
        "a red fox in snow --ar 16:9 --seed 13 --chaos 10 --stylize 750 --iw 1.5 "
        "--v 5.1 --q .5 --stop 30 --no blur 1:1 3:4 4:3 100 1000 101 $5 2048x1024 13, 7-13"
    )
    assert found(entries, prompt) is None


def test_a_word_with_digits_glued_on_is_decoded() -> None:
    """A digit inside a word is a letter: "b1g" is "big", "1e" is "ie"."""
    assert found(["big"], "a b1g house") == "big"
    assert found(["ie"], "that is, 1e, nothing") == "ie"


# --------------------------------------------------------------------------- size


def test_a_long_prompt_against_a_long_list() -> None:
    """A 10,000-character prompt is searched against 5,000 entries; the late entry is found."""
    rng = random.Random(7)
    entries = {
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(6, 12)))
        for _ in range(5_000)
    }
    entries.add("spoon")
    words = BannedWords(sorted(entries))
    filler = "a quiet harbour at dawn, 35mm --ar 3:2 "
    innocent = (filler * (10_000 // len(filler) + 1))[:10_000]
    assert len(words) == len(entries)
    assert words.find(innocent) is None
    assert words.find(innocent[:-10] + " s.p.0.0.n") == BannedMatch("spoon", "s.p.o.o.n")


def test_a_long_run_of_single_letters_is_searched() -> None:
    """10,000 characters of spelt-out letters are read, and a spelt entry in them found."""
    words = BannedWords(["a" * 30, "ab" * 10 + "c"])
    assert words.find("a." * 5_000) == BannedMatch("a" * 30, ".".join("a" * 30))
    assert words.find("a b " * 2_500) is None


# --------------------------------------------------------------------------- properties


@st.composite
def disguised(draw: st.DrawFn) -> tuple[str, str]:
    """A banned word and a disguise: look-alikes, accents, invisible and punctuation marks."""
    word = draw(st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=10))
    letters = []
    for letter in word:
        options = [letter, letter.upper(), chr(ord(letter) - ord("a") + ord("ａ"))]
        options += LOOKS_LIKE.get(letter, [])
        letters.append(draw(st.sampled_from(options)) + draw(st.sampled_from(["", "\u0301"])))
    # A token with no letter at all is a number and stays one (see the module's docstring),
    # so is a digit spelt out on its own between spaces.
    numeric = [part[0].isdigit() or part[0] == "$" for part in letters]
    assume(not all(numeric))
    if not any(numeric) and draw(st.booleans()):
        text = " ".join(letters)
    else:
        gaps = st.text(alphabet=".-_*~'/:" + "".join(ZERO_WIDTH), max_size=3)
        text = "".join(letter + draw(gaps) for letter in letters)
    return word, text


@settings(max_examples=300, deadline=None)
@given(disguised())
def test_disguised_banned_words_are_found(case: tuple[str, str]) -> None:
    """Look-alikes, accents, zero-width and punctuation between letters never hide a word."""
    word, text = case
    assert found([word], PROMPT.format(text)) == word


@settings(max_examples=200, deadline=None)
@given(
    word=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8),
    before=st.text(alphabet=string.ascii_lowercase, max_size=3),
    after=st.text(alphabet=string.ascii_lowercase, max_size=3),
)
def test_a_banned_word_inside_a_longer_word_is_not_found(
    word: str, before: str, after: str
) -> None:
    """Letters glued on either side make another word, which is not refused."""
    assume(before or after)
    assert found([word], f"-- {before}{word}{after} --") is None
