"""The local byte-level BPE trainer and the CLIP tokenizer files it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.engine.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    END_OF_WORD,
    END_TOKEN,
    PROMPT_CORPUS,
    START_TOKEN,
    bytes_to_unicode,
    pretokenize,
    train_bpe,
    write_clip_tokenizer,
)

CORPUS = PROMPT_CORPUS.splitlines()


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return train_bpe(CORPUS, DEFAULT_VOCAB_SIZE)


@pytest.fixture(scope="module")
def tokenizer_dir(
    tmp_path_factory: pytest.TempPathFactory, trained: tuple[dict[str, int], list[tuple[str, str]]]
) -> Path:
    vocab, merges = trained
    return write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"), vocab, merges)


def test_training_is_deterministic(trained):
    """Training twice on the same corpus gives the same vocabulary and merges."""
    vocab, merges = train_bpe(list(CORPUS), DEFAULT_VOCAB_SIZE)
    assert (list(vocab.items()), merges) == (list(trained[0].items()), trained[1])


def test_vocabulary_layout_is_clip_s(trained):
    """Bytes, then bytes with </w>, then merge results, then the start and end tokens."""
    vocab, merges = trained
    tokens = sorted(vocab, key=vocab.__getitem__)
    symbols = list(bytes_to_unicode().values())
    assert len(vocab) == DEFAULT_VOCAB_SIZE
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert tokens[:256] == symbols
    assert tokens[256:512] == [symbol + END_OF_WORD for symbol in symbols]
    assert tokens[-2:] == [START_TOKEN, END_TOKEN]
    assert all(left + right in vocab for left, right in merges)
    assert tokens[512] == merges[0][0] + merges[0][1]


def test_byte_mapping_covers_every_byte_printably():
    """Each of the 256 bytes maps to its own printable, non-space character."""
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in table.values())
    assert table[ord("a")] == "a"
    assert table[ord(" ")] == "Ġ"


def test_pretokenize_splits_letters_digits_and_other():
    """Words are lowercased and split into letter runs, single digits and other runs."""
    assert pretokenize("A Fox's 42 tails!!") == ["a", "fox", "'s", "4", "2", "tails", "!!"]


def test_most_frequent_pair_is_merged_first():
    """The pair seen most often becomes the first merge."""
    _, merges = train_bpe(["ab xy xy"], 520)
    assert merges[0] == ("x", "y</w>")


def test_ties_go_to_the_smallest_pair():
    """Among equally frequent pairs the lexicographically smallest is merged first."""
    _, merges = train_bpe(["cd ab"], 520)
    assert merges == [("a", "b</w>"), ("c", "d</w>")]


def test_training_stops_when_no_pair_is_left():
    """A corpus too small for the target size gives fewer merges, specials still last."""
    vocab, merges = train_bpe(["abc"], 600)
    assert merges == [("a", "b"), ("ab", "c</w>")]
    assert len(vocab) == 512 + 2 + 2
    assert vocab[END_TOKEN] == len(vocab) - 1


def test_too_small_a_vocabulary_is_refused():
    """A size that cannot hold the byte symbols and the specials is a ValueError."""
    with pytest.raises(ValueError, match="at least 514"):
        train_bpe(CORPUS, 513)


def test_files_are_written_in_clip_s_layout(tokenizer_dir, trained):
    """merges.txt starts with its version header and lists the merges in order."""
    _, merges = trained
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert lines[1:] == [f"{left} {right}" for left, right in merges]
    for name in ("vocab.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert (tokenizer_dir / name).is_file()


def test_clip_tokenizer_loads_and_round_trips(tokenizer_dir):
    """CLIPTokenizer.from_pretrained reads the folder, encodes to learned ids and decodes back."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer("a lighthouse at dusk").input_ids
    assert len(tokenizer) == DEFAULT_VOCAB_SIZE
    assert tokenizer.model_max_length == 77
    assert ids[0] == tokenizer.bos_token_id == DEFAULT_VOCAB_SIZE - 2
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id == DEFAULT_VOCAB_SIZE - 1
    assert len(set(ids[1:-1])) > 2
    assert max(ids[1:-1]) >= 512  # at least one learned merge, not only bytes
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a lighthouse at dusk"
