"""A small deterministic byte-level BPE trainer that writes CLIP's tokenizer files.

The embedded tiny model needs a tokenizer without reaching a model hub. This trains one
from a built-in corpus of image prompts, in CLIP's vocabulary layout: the 256 byte
symbols, the same with the ``</w>`` end-of-word suffix, the learned merges, then the
start and end tokens. Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_VOCAB_SIZE = 1000
MERGES_HEADER = "#version: 0.2"

# Roughly CLIP's pre-tokenizer: contractions, runs of letters, single digits, runs of
# anything else. Python's ``re`` has no \p{L}; ``[^\W\d_]`` is its spelling of "letter".
_WORD_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")

PROMPT_CORPUS = """
a lighthouse at dusk on a rocky coast, dramatic clouds, golden hour, oil painting
portrait of an old fisherman with a grey beard, soft window light, highly detailed
a cozy cabin in a snowy forest at night, warm light in the windows, digital art
a red fox sitting in a field of wildflowers, morning mist, photograph, bokeh
cyberpunk city street in the rain, neon signs, reflections, cinematic lighting
a castle on a hill above a misty valley, fantasy landscape, matte painting
a cat wearing a tiny wizard hat, studio photo, sharp focus, pastel background
an astronaut riding a horse on the moon, stars, earth in the sky, concept art
a bowl of ramen with an egg and green onions, food photography, top view
an ancient temple in the jungle, overgrown with vines, sunbeams, volumetric light
a sailing ship in a storm, huge waves, lightning, dark blue sea, dramatic
a watercolor painting of a quiet village by a river in spring, cherry blossoms
a robot reading a book in a library, warm lamp light, detailed illustration
mountains reflected in a calm lake at sunrise, pink and orange sky, landscape
a dragon flying over a burning city, smoke and fire, epic fantasy, wide angle
close up of a hummingbird drinking from a purple flower, macro photography
a steampunk airship above the clouds, brass and copper, intricate details
a girl with a red umbrella walking in the rain, anime style, soft colors
still life of apples, grapes and a silver jug on a wooden table, baroque
a futuristic car in a white studio, product render, octane render, 3d
a wolf howling at the full moon, winter night, snow, silhouette, blue tones
an underwater coral reef with colorful fish and a sea turtle, clear water
a desert with tall sand dunes at sunset, long shadows, minimal, warm tones
a medieval knight in shining armor, portrait, dramatic rim light, dark background
a tree house in a giant oak tree, summer afternoon, children's book illustration
a busy market in marrakech, spices, lanterns, vibrant colors, street photography
a frozen waterfall in the mountains, ice, cold light, high resolution, 8k
a vintage bicycle leaning against a yellow wall with flowers, film photo, 35mm
a bouquet of sunflowers in a blue vase, impressionist painting, thick brush strokes
an owl perched on a branch in an autumn forest, orange leaves, soft focus
a small boat on a glassy lake, fog, black and white photograph, minimalism
a surreal landscape with floating islands and waterfalls, dreamlike, vivid
a pixel art village with tiny houses and a windmill, retro video game
a marble statue of a woman in a museum, soft light, elegant, classical sculpture
a city skyline at night seen from above, long exposure, light trails
a portrait of a young woman with freckles, natural light, 85mm lens, shallow depth of field
a green dragon made of leaves and moss, forest spirit, magical glow
a lonely road through a field of wheat, big sky, summer, golden light
a cup of coffee and a croissant on a cafe table, morning, cozy, warm
a giant whale swimming through the clouds, fantasy art, pastel sky
an abstract painting with bold shapes and bright primary colors, bauhaus
a pencil sketch of an old house, cross hatching, black ink on white paper
a glowing mushroom forest at night, bioluminescent, blue and purple, magical
a lion resting on a rock in the savanna, evening light, wildlife photography
a spaceship landing on a red planet, dust, two suns, science fiction
a japanese garden with a wooden bridge and koi pond, maple trees, serene
a knight and a dragon, stained glass window, rich colors, gothic cathedral
a crowded beach in summer, umbrellas, people swimming, aerial view, drone photo
a cottage with a thatched roof and a rose garden, english countryside
a samurai standing in a bamboo forest, wind, falling leaves, ukiyo-e print
a cute robot dog playing with a ball in a park, cartoon, bright colors
a steaming cup of tea by a rainy window, moody, soft shadows, hygge
a portrait of a king with a golden crown, renaissance painting, oil on canvas
an isometric room with a desk, computer, plants and a cat, low poly, 3d render
the northern lights over a snowy mountain cabin, green sky, long exposure
a pirate ship in a bottle on a shelf, tilt shift, miniature, macro
a black cat on a windowsill at night with a crescent moon, ink illustration
a hot air balloon festival over green hills, morning, many colors, wide shot
a cathedral interior with light beams through stained glass, dust, awe
a comic book panel of a superhero landing in the street, halftone, bold lines
a bowl of fresh fruit, strawberries, oranges and bananas, bright, clean, high key
""".strip()


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible mapping from each byte to a printable unicode character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codepoints = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + shifted)
            shifted += 1
    return {byte: chr(codepoint) for byte, codepoint in zip(printable, codepoints, strict=True)}


def pretokenize(text: str) -> list[str]:
    """Lowercased words split as CLIP does, each in byte-level symbols."""
    table = bytes_to_unicode()
    words = _WORD_PATTERN.findall(" ".join(text.lower().split()))
    return ["".join(table[byte] for byte in word.encode("utf-8")) for word in words]


def train_bpe(
    corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn merges from ``corpus`` until the vocabulary holds ``vocab_size`` tokens.

    Deterministic: the most frequent pair is merged first, ties going to the
    lexicographically smallest pair. Training stops early when no pair is left.
    """
    base = list(bytes_to_unicode().values())
    tokens = base + [symbol + END_OF_WORD for symbol in base]
    if vocab_size < len(tokens) + 2:
        raise ValueError(f"vocab_size must be at least {len(tokens) + 2}, got {vocab_size}")
    seen = set(tokens)
    words = _word_symbols(corpus)
    merges: list[tuple[str, str]] = []
    while len(tokens) < vocab_size - 2:
        pair = _best_pair(words)
        if pair is None:
            break
        merges.append(pair)
        merged = pair[0] + pair[1]
        # Two different merges may spell the same token; it keeps its first id.
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
        words = {_apply_merge(symbols, pair): count for symbols, count in words.items()}
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def _word_symbols(corpus: Iterable[str]) -> dict[tuple[str, ...], int]:
    counts: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        for word in pretokenize(text):
            counts[(*word[:-1], word[-1] + END_OF_WORD)] += 1
    return dict(counts)


def _best_pair(words: Mapping[tuple[str, ...], int]) -> tuple[str, str] | None:
    pairs: Counter[tuple[str, str]] = Counter()
    for symbols, count in words.items():
        for pair in itertools.pairwise(symbols):
            pairs[pair] += count
    if not pairs:
        return None
    return min(pairs, key=lambda pair: (-pairs[pair], pair))


def _apply_merge(symbols: Sequence[str], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(pair[0] + pair[1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)


def write_clip_tokenizer(
    folder: Path,
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    model_max_length: int = 77,
) -> Path:
    """Write the files ``CLIPTokenizer.from_pretrained(folder)`` reads; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = {
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        **specials,
    }
    _write_json(folder / "vocab.json", dict(vocab), indent=None)
    lines = [MERGES_HEADER, *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", config)
    return folder


def _write_json(path: Path, data: object, indent: int | None = 2) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
