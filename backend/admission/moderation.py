"""Banned words: prompts that contain an entry of the admins' list, as a whole word, are refused.

Prompts are compared in a normalised form (:func:`normalise`) that undoes the usual ways of
dressing a word up so that a plain list misses it:

1. Compatibility decomposition (NFKD): fullwidth ``ｂａｄ``, mathematical ``𝐛𝐚𝐝``, circled
   ``ⓑⓐⓓ`` and ligatures read as plain letters.
2. Characters that show nothing are dropped: format characters (category Cf: zero-width
   space and joiners, soft hyphen, byte-order mark, bidi controls, tags), the Hangul fillers
   and the blank braille pattern. So are combining marks (Mn, Mc, Me), so ``bàd`` is ``bad``;
   scripts that write vowels as marks are compared without them, list and prompt alike.
3. Look-alikes become the Latin letter they pass for (:data:`LOOKALIKES`): Cyrillic and Greek
   homoglyphs, a few Latin letters from other alphabets (``ɑ ɡ ı ȷ``), and the enclosed and
   regional-indicator letters (``🅱``, ``🇧``) that have no decomposition. The table is read
   by shape and before case folding, because some capitals and their small letters look like
   different Latin letters: Greek ``Η`` is ``h`` but ``η`` is ``n``, ``Ν``/``ν`` are ``n``/``v``,
   ``Μ``/``μ`` are ``m``/``u``, ``Υ``/``υ`` are ``y``/``u``. The price: a Greek *entry* with
   those letters matches Greek text in the same case only.
4. Case folding, then steps 1 to 3 again for what folding produced; NFC at the end.
5. Leetspeak (:data:`LEET`), token by token: a whitespace-delimited token that contains a
   letter or ``@`` reads ``0 1 3 4 5 7`` as ``o i e a s t``, ``@ $`` as ``a s``, and ``! |``
   as ``i l`` where they stand between two letters or digits (``b!g``; ``bad!`` keeps it).
   A token without one (``42``, ``16:9``, ``1.5``, ``$5``, ``--``) is a number or punctuation
   and stays as written, so Midjourney flags such as ``--seed 13`` never read as ``ie``. A
   digit glued to letters does read as a letter (``3d`` is ``ed``, ``4k`` is ``ak``); that
   only matters for an entry equal to the whole token. ``1`` reads as ``i`` only, never ``l``.

Matching works on words: maximal runs of letters and digits, cut by whitespace and
punctuation (``_`` included). An entry matches a word, never part of one: ``bad`` is not
in ``badge``, ``abad`` or ``bandana``. Two kinds of word split are undone:

- Punctuation between the letters of a word: within a whitespace-delimited token,
  consecutive runs are also read joined (``b.a.d``, ``b-a-d``, ``b_a_d``, ``b*a*d``,
  ``b.ad``). Each run stays a word of its own too, so ``bad-ass`` holds ``bad``.
- Letters spelt out one by one: single characters separated by whitespace are read
  joined (``b a d``). Longer words separated by whitespace are never joined, because
  ordinary text would then hold ``pen is`` = ``penis``; so ``ba d`` is not ``bad``. The
  price is that stray single letters join too (``x a a`` holds ``xaa``), and a digit spelt
  out alone is a number, not a letter (``b 4 d`` is not ``bad``).

Scripts written without spaces (Chinese, Japanese, Thai) give no word boundaries to find:
an entry in them matches only a whole run between spaces or punctuation.

The symbols ``@ $ ! |`` are read both ways: as letters (``@ss``, ``b!g``) and as
punctuation (``bad|ugly``, ``b!a!d``), so that reading one as a letter cannot glue two words
together.

An entry is normalised the same way; punctuation inside an entry's word is dropped
(``t-shirt`` is the word ``tshirt``), and its whitespace separates words. An entry of several
words matches those words in order with any whitespace or punctuation between them.

The list is held as a set of entry words and their prefixes, so a prompt costs one pass over
its words whatever the length of the list.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import MappingProxyType

_DROPPED_CATEGORIES = frozenset({"Cf", "Mn", "Mc", "Me"})
# Letters that show nothing but are not format characters.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")

_PAIRS = (
    # Cyrillic capitals, then small letters.
    "АA ВB ЕE КK МM НH ОO РP СC ТT УY ХX ІI ЈJ ЅS ԀD ԚQ ԜW ҮY ҺH ӀI ѴV"
    " аa вb еe кk мm нh оo рp сc тt уy хx іi јj ѕs ԁd ԛq ԝw үy һh ӏl ѵv"
    # Greek capitals, then small letters (by shape: see the module's docstring).
    " ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX"
    " αa βb γy εe ηn ιi κk μu νv οo ρp τt υu χx ωw ϳj"
    # Latin letters of other alphabets.
    " ɑa ɡg ıi ȷj ǀl ɩi"
)
LOOKALIKES: MappingProxyType[str, str] = MappingProxyType(
    {pair[0]: pair[1] for pair in _PAIRS.split()}
    # Negative circled, negative squared and regional-indicator letters A to Z.
    | {
        chr(base + offset): chr(ord("a") + offset)
        for base in (0x1F150, 0x1F170, 0x1F1E6)
        for offset in range(26)
    }
)
"""Look-alike characters and the Latin letter each is read as."""

_LOOKALIKE_TABLE = str.maketrans(dict(LOOKALIKES))

_LEET_DIGITS = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t"}
_LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i", "|": "l"}
LEET: MappingProxyType[str, str] = MappingProxyType(_LEET_DIGITS | _LEET_SYMBOLS)
"""Digits and symbols read as letters inside a token that holds a letter or ``@``."""

_AS_LETTERS = str.maketrans(dict(LEET))
_AS_PUNCTUATION = str.maketrans(_LEET_DIGITS)
_WITHOUT_BARS = str.maketrans(_LEET_DIGITS | {"@": "a", "$": "s"})
# "!" and "|" end sentences and split words; they read as letters only between two others.
_INNER_BARS = re.compile(r"(?<=[^\W_]|[@$])[!|]+(?=[^\W_]|[@$])")
_TOKEN = re.compile(r"\S+")
# A letter is a word character that is neither a digit nor the underscore.
_WORDLIKE = re.compile(r"[^\W\d_]|@")
_RUN = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class BannedMatch:
    """A banned entry found in a prompt: for the log, never shown to the user."""

    entry: str
    """The normalised list entry that matched."""
    matched: str
    """The normalised prompt text that matched it."""


def _strip(text: str) -> str:
    return "".join(
        ch
        for ch in text
        if unicodedata.category(ch) not in _DROPPED_CATEGORIES and ch not in _FILLERS
    )


def _unmask(text: str) -> str:
    return _strip(unicodedata.normalize("NFKD", text)).translate(_LOOKALIKE_TABLE)


def _letters(text: str) -> str:
    """Steps 1 to 4 of the module's docstring: everything but leetspeak."""
    return unicodedata.normalize("NFC", _unmask(_unmask(text).casefold()))


def _as_letters(word: str) -> str:
    inner = _INNER_BARS.sub(lambda bars: bars.group().translate(_AS_LETTERS), word)
    return inner.translate(_WITHOUT_BARS)


def _leet(text: str, *, symbols: bool) -> str:
    """Step 5: leetspeak, with ``@ $ ! |`` read as letters or left as punctuation."""

    def token(found: re.Match[str]) -> str:
        word = found.group()
        if not _WORDLIKE.search(word):
            return word
        return _as_letters(word) if symbols else word.translate(_AS_PUNCTUATION)

    return _TOKEN.sub(token, text)


def normalise(text: str) -> str:
    """``text`` as banned words are matched against it (steps 1 to 5 of the module's
    docstring, with ``@ $ ! |`` read as letters). Idempotent."""
    return _leet(_letters(text), symbols=True)


def _entry_words(text: str) -> tuple[str, ...]:
    words = ("".join(_RUN.findall(token)) for token in text.split())
    return tuple(word for word in words if word)


def normalise_entry(word: str) -> str:
    """An entry of the list in its normalised form: its words, joined by one space.

    Raises :class:`ValueError` for an entry with no letter or digit left to match.
    """
    words = _entry_words(normalise(word))
    if not words:
        raise ValueError(f"banned word {word!r} has no letters or digits to match")
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class _Runs:
    """A text's runs of letters and digits, and whether each may join the one before."""

    text: str
    spans: list[tuple[int, int]]
    words: list[str]
    joins: list[bool]

    @classmethod
    def of(cls, text: str) -> _Runs:
        found = list(_RUN.finditer(text))
        words = [run.group() for run in found]
        joins = [False] * len(found)
        for index in range(1, len(found)):
            between = text[found[index - 1].end() : found[index].start()]
            # Whitespace joins only letters spelt out one by one ("b a d").
            spelt = len(words[index - 1]) == 1 and len(words[index]) == 1
            joins[index] = spelt or not _SPACE.search(between)
        return cls(text, [run.span() for run in found], words, joins)

    def excerpt(self, first: int, last: int) -> str:
        """The text from run ``first`` to run ``last``, both included."""
        return self.text[self.spans[first][0] : self.spans[last][1]]


class BannedWords:
    """The admins' list, ready to search prompts in: :meth:`find` the first entry a prompt
    contains. Raises :class:`ValueError` for an entry that normalises to nothing."""

    def __init__(self, words: Iterable[str]) -> None:
        self._entries: dict[tuple[str, ...], str] = {}
        for word in words:
            entry = normalise_entry(word)
            self._entries[tuple(entry.split(" "))] = entry
        self._by_first: dict[str, list[tuple[str, ...]]] = {}
        for key in sorted(self._entries, key=len):
            self._by_first.setdefault(key[0], []).append(key)
        self._words = frozenset(word for key in self._entries for word in key)
        self._prefixes = frozenset(
            word[:end] for word in self._words for end in range(1, len(word))
        )

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, text: str) -> BannedMatch | None:
        """The first entry ``text`` contains, in the order of the text, or ``None``."""
        if not self._entries:
            return None
        letters = _letters(text)
        readings = [_leet(letters, symbols=True)]
        if any(symbol in letters for symbol in _LEET_SYMBOLS):
            readings.append(_leet(letters, symbols=False))
        for reading in readings:
            found = self._find_in(_Runs.of(reading))
            if found is not None:
                return found
        return None

    def _find_in(self, runs: _Runs) -> BannedMatch | None:
        starting = [dict(self._words_from(runs, first)) for first in range(len(runs.words))]
        for first, words in enumerate(starting):
            for word, last in words.items():
                for key in self._by_first.get(word, ()):
                    end = _follow(starting, key[1:], last + 1)
                    if end is not None:
                        return BannedMatch(self._entries[key], runs.excerpt(first, end))
        return None

    def _words_from(self, runs: _Runs, first: int) -> Iterator[tuple[str, int]]:
        """Each entry word that runs ``first`` to some ``last`` spell, with that ``last``."""
        word = ""
        for last in range(first, len(runs.words)):
            if last > first and not runs.joins[last]:
                return
            word += runs.words[last]
            if word in self._words:
                yield word, last
            if word not in self._prefixes:
                return


def _follow(starting: list[dict[str, int]], rest: tuple[str, ...], run: int) -> int | None:
    """The last run of ``rest`` read word by word from run ``run`` on, or ``None``."""
    last = run - 1
    for word in rest:
        if last + 1 >= len(starting):
            return None
        found = starting[last + 1].get(word)
        if found is None:
            return None
        last = found
    return last
