"""Image-caption data for the tiny vision-language run, and caption-ranking evaluation helpers.

  data = prepare_caption_data(config.data, workdir)      # config.data.kind == "captions"
  model_config = model_config.replace(**data.model_overrides())   # compact vocab size + image/vision token ids
  batch = next(data.train)                               # dict of NumPy arrays, fixed shapes
  data.train.get_state() / data.train.set_state(state)   # resume the shuffled order
  data.validation["emoji"]                               # list of batches (held-out images)
  scores = score_candidates(data, data.ranking["emoji"], log_likelihood_fn)   # [images, candidates]
  rank_metrics(scores, data.ranking["emoji"].true_index) # {"top1": ..., "mean_rank": ..., ...}

Sources (``data.sources``):
  ``emoji``   every single-code-point glyph of Debian's ``fonts-noto-color-emoji`` (Pillow, size 109: the font's
              only bitmap size, ``embedded_color=True``) on white, cropped to its bounding box, padded square and
              resized to ``image_size``; caption ``unicodedata.name(ch).lower()`` (~1,400 images).
  ``digits``  scikit-learn's bundled 8x8 digits (1,797 images; the CSV is read by path, sklearn is not imported),
              dark ink on white, upscaled (nearest) to ``image_size``; caption ``"digit seven"``.
Rendered images are cached as ``WORKDIR/caption_cache/<source>_<size>.npy`` (+ ``.json`` captions).

Each source is split by ``split_seed`` into training pairs and held-out pairs (``heldout_fraction``): held-out
emoji never appear in training, with any caption. A row is
``<|vision_start|> <|image_pad|>×n <|vision_end|> caption <|endoftext|> <pad>…`` (``n = (size/32)²`` merged
image tokens, grid ``(1, size/16, size/16)``), ``seq_len`` tokens; ``targets`` are the next tokens, ``loss_mask`` is
set only where the target is a caption token or the closing ``<|endoftext|>``. Tokens are real Qwen3.5 ids mapped to
a compact vocabulary built from the training captions (+ the vision / end-of-text specials), saved as
``WORKDIR/compact_vocab.json``. Batches: ``input_ids / targets / segment_ids [B, T] int32``, ``loss_mask [B, T]
bool``, ``positions [3, B, T] int32`` (mRoPE, ``layout_positions``), ``pixel_values [B·P, 1536] float32``,
``image_grid_thw [B, 3] int64`` (constant: pass it to the model as a static value under jit).

Ranking (``data.ranking[source]``): each held-out image against ``num_candidates`` captions — its own and
``num_candidates - 1`` other distinct held-out captions of the same source drawn with ``rank_seed`` — scored by the
summed log-likelihood of the caption tokens (+ ``<|endoftext|>``); ``rank_metrics`` gives top-1 accuracy (chance
``1 / num_candidates``) and the mean rank of the true caption (chance ``(num_candidates + 1) / 2``).
``caption_priors`` scores each caption with a blank image, for a second, prior-corrected (PMI) ranking.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from qwen35_jax.data.images import ImageProcessorConfig, process_images
from qwen35_jax.data.text_dataset import VOCAB_FILE
from qwen35_jax.data.tokenizer import ENDOFTEXT, get_tokenizer
from qwen35_jax.data.vocab import CompactVocab

Batch = dict[str, np.ndarray]
SOURCES = ("emoji", "digits")
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_FONT_SIZE = 109  # the only bitmap strike of Noto Color Emoji
EMOJI_INSTALL = "apt-get install -y fonts-noto-color-emoji"
# Code points scanned for emoji glyphs: General Punctuation .. CJK symbols, and the supplementary symbol planes.
EMOJI_RANGES = ((0x2000, 0x3300), (0x1F000, 0x1FB00))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_INSTALL = "pip install scikit-learn (its bundled datasets/data/digits.csv.gz is read by path)"
CACHE_DIR = "caption_cache"
PATCH, MERGE, TEMPORAL = 16, 2, 2  # the Qwen3.5 image processor / vision tower geometry (numerics §2.10)
VISION_SPECIALS = {"vision_start_token_id": "<|vision_start|>", "image_token_id": "<|image_pad|>",
                   "vision_end_token_id": "<|vision_end|>", "video_token_id": "<|video_pad|>"}


# ------------------------------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaptionDataConfig:
    """The ``config.data`` fields of ``kind = "captions"`` (see ``configs/vl_tiny.py``)."""

    sources: str = "emoji,digits"  # comma-separated subset of SOURCES
    image_size: int = 64  # pixels per side; a multiple of 32 (patch 16 x merge 2)
    seq_len: int = 24  # tokens per row: 2 + (image_size/32)^2 image tokens + caption + <|endoftext|> must fit
    batch_size: int = 32
    seed: int = 0  # training shuffle
    split_seed: int = 0  # which images are held out
    heldout_fraction: float = 0.1  # of each source
    num_candidates: int = 10  # captions ranked per held-out image (true + num_candidates - 1 others)
    rank_seed: int = 0  # which other captions are the candidates
    digits_csv: str = ""  # "": scikit-learn's bundled file, found without importing sklearn
    font_path: str = EMOJI_FONT
    # Training images only: each is shrunk to a random 70-100 % of its side and placed at a random spot on a white
    # canvas, drawn from (seed, epoch, row) so a resumed run sees the same images.
    augment: bool = False

    def __post_init__(self) -> None:
        names = self.source_names
        unknown = [s for s in names if s not in SOURCES]
        if not names or unknown or len(set(names)) != len(names):
            _fail("sources", self.sources, f"a comma-separated, non-repeating subset of {SOURCES}, e.g. 'emoji'")
        if self.image_size <= 0 or self.image_size % (PATCH * MERGE):
            _fail("image_size", self.image_size, f"must be a positive multiple of {PATCH * MERGE} (patch {PATCH} x "
                  f"merge {MERGE}), e.g. 64 -> grid (1, 4, 4) -> 4 image tokens")
        if self.seq_len < self.num_image_tokens + 4:
            _fail("seq_len", self.seq_len, f"must hold vision start/end, {self.num_image_tokens} image tokens, a "
                  f"caption and <|endoftext|>: at least {self.num_image_tokens + 4}")
        if self.batch_size < 1:
            _fail("batch_size", self.batch_size, "must be >= 1")
        if not 0 < self.heldout_fraction < 1:
            _fail("heldout_fraction", self.heldout_fraction, "must be in (0, 1), e.g. 0.1")
        if self.num_candidates < 2:
            _fail("num_candidates", self.num_candidates, "must be >= 2 (the true caption and at least one other)")

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in str(self.sources).split(",") if s.strip())

    @property
    def grid(self) -> tuple[int, int, int]:
        return (1, self.image_size // PATCH, self.image_size // PATCH)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // (PATCH * MERGE)) ** 2

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CaptionDataConfig:
        """From ``config.data`` (a ConfigDict or dict); ``kind`` is ignored, unknown fields are an error."""
        values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
        values.pop("kind", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.data has unknown field(s) {unknown} for kind='captions'; valid: {sorted(known)}")
        return cls(**values)


def _fail(field: str, value: Any, fix: str) -> None:
    raise ValueError(f"config.data.{field}={value!r} is invalid: {fix}")


# ------------------------------------------------------------------------------------------------ image sources


@dataclasses.dataclass(frozen=True)
class CaptionSet:
    """Images ``[N, S, S, 3]`` uint8 with one caption each."""

    name: str
    images: np.ndarray
    captions: tuple[str, ...]


def _square_on_white(rgba: np.ndarray, size: int) -> np.ndarray:
    """Crop an RGBA render to its visible pixels, composite on white, pad to a centred square, resize (Lanczos)."""
    from PIL import Image

    ys, xs = np.nonzero(rgba[..., 3])
    crop = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    side = max(crop.shape[:2])
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas.alpha_composite(Image.fromarray(np.ascontiguousarray(crop), "RGBA"), (left, top))
    return np.asarray(canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def render_emoji(size: int, font_path: str = EMOJI_FONT, codepoints: Iterable[int] | None = None) -> CaptionSet:
    """Every named single-code-point emoji of the colour font among ``codepoints`` (default: ``EMOJI_RANGES``);
    letters, marks, spaces, controls and code points without a glyph are skipped."""
    from PIL import Image, ImageDraw, ImageFont

    if not os.path.exists(font_path):
        raise FileNotFoundError(f"emoji font not found at {font_path}: {EMOJI_INSTALL} (Debian), or set "
                                "config.data.font_path / drop 'emoji' from config.data.sources")
    font = ImageFont.truetype(font_path, EMOJI_FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)
    canvas = 2 * EMOJI_FONT_SIZE
    images, captions = [], []
    if codepoints is None:
        codepoints = (code for start, stop in EMOJI_RANGES for code in range(start, stop))
    for code in codepoints:
        char = chr(code)
        name = unicodedata.name(char, "")
        if not name or unicodedata.category(char)[0] in "LMZC":
            continue
        img = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((canvas // 2, canvas // 2), char, font=font, embedded_color=True, anchor="mm")
        rgba = np.asarray(img)
        if not rgba[..., 3].any():  # no glyph in the font: nothing drawn
            continue
        images.append(_square_on_white(rgba, size))
        captions.append(name.lower())
    if not images:
        raise RuntimeError(f"{font_path} rendered no emoji; is it Noto Color Emoji? ({EMOJI_INSTALL})")
    return CaptionSet("emoji", np.stack(images), tuple(captions))


def default_digits_csv() -> str:
    """scikit-learn's bundled ``digits.csv.gz``, located without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the digits source needs scikit-learn's data file: {DIGITS_INSTALL}, or set "
                                "config.data.digits_csv=/path/to/digits.csv.gz, or drop 'digits' from "
                                "config.data.sources")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the scikit-learn install; set config.data.digits_csv")
    return path


def load_digits(size: int, csv_path: str = "") -> CaptionSet:
    """The 1,797 8x8 digits (values 0..16, label in the last column) as ``size``² RGB, captions ``digit <word>``."""
    from PIL import Image

    path = csv_path or default_digits_csv()
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.data.digits_csv={path!r} does not exist ({DIGITS_INSTALL})")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{path}: expected rows of 64 pixel values + 1 label; got shape {table.shape}")
    ink = np.round(255.0 - table[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    images = np.stack([np.asarray(Image.fromarray(d, "L").resize((size, size), Image.Resampling.NEAREST)
                                  .convert("RGB")) for d in ink])
    captions = tuple(f"digit {DIGIT_WORDS[int(label)]}" for label in table[:, 64])
    return CaptionSet("digits", images, captions)


def load_source(name: str, config: CaptionDataConfig, workdir: str) -> CaptionSet:
    """One source, rendered once and cached under ``workdir/caption_cache``."""
    cache = os.path.join(workdir, CACHE_DIR)
    stem = os.path.join(cache, f"{name}_{config.image_size}")
    origin = config.font_path if name == "emoji" else (config.digits_csv or "sklearn")
    if os.path.exists(stem + ".npy") and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            meta = json.load(f)
        captions = tuple(meta["captions"])
        images = np.load(stem + ".npy")
        if meta.get("origin") == origin and images.shape == (len(captions), config.image_size, config.image_size, 3):
            return CaptionSet(name, images, captions)
    if name == "emoji":
        data = render_emoji(config.image_size, config.font_path)
    else:
        data = load_digits(config.image_size, config.digits_csv)
    os.makedirs(cache, exist_ok=True)
    np.save(stem + ".tmp.npy", data.images)
    os.replace(stem + ".tmp.npy", stem + ".npy")
    with open(stem + ".json.tmp", "w") as f:
        json.dump({"origin": origin, "captions": list(data.captions)}, f)
    os.replace(stem + ".json.tmp", stem + ".json")
    return data


def heldout_split(count: int, fraction: float, seed: int, source_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) indices of ``count`` items: ``round(fraction · count)`` (>= 1) held out."""
    order = np.random.default_rng([seed, source_index]).permutation(count)
    n_out = min(max(1, round(fraction * count)), count - 1)
    return np.sort(order[n_out:]), np.sort(order[:n_out])


# ------------------------------------------------------------------------------------------------ rows and batches


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """How captions become fixed-length rows (compact ids)."""

    seq_len: int
    grid: tuple[int, int, int]
    num_image_tokens: int
    vision_start: int
    image_token: int
    vision_end: int
    eos: int
    processor: ImageProcessorConfig

    def max_caption_tokens(self) -> int:
        return self.seq_len - self.num_image_tokens - 3  # start, end, <|endoftext|>


def caption_rows(captions: list[np.ndarray], layout: RowLayout) -> dict[str, np.ndarray]:
    """``input_ids / targets / segment_ids [N, T]`` int32 and ``loss_mask [N, T]`` bool for compact caption ids."""
    n, length = len(captions), layout.seq_len
    tokens = np.zeros((n, length + 1), np.int32)
    segments = np.zeros((n, length + 1), np.int32)
    mask = np.zeros((n, length), bool)
    prefix = [layout.vision_start] + [layout.image_token] * layout.num_image_tokens + [layout.vision_end]
    for row, caption in enumerate(captions):
        if len(caption) > layout.max_caption_tokens():
            raise ValueError(f"a caption of {len(caption)} tokens does not fit seq_len={length}; raise "
                             f"config.data.seq_len to >= {len(caption) + len(prefix) + 1}")
        seq = prefix + [int(t) for t in caption] + [layout.eos]
        tokens[row, :len(seq)] = seq
        segments[row, :len(seq)] = 1
        # Position i predicts token i + 1: the caption and <|endoftext|> are predicted from vision_end onwards.
        mask[row, len(prefix) - 1:len(seq) - 1] = True
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments[:, :-1],
            "loss_mask": mask}


def layout_positions(segment_ids: np.ndarray, layout: RowLayout) -> np.ndarray:
    """mRoPE positions ``[3, N, T]`` int32 of caption rows: ``qwen35_jax.model.multimodal.get_rope_index``
    specialised to this fixed layout (every row starts ``<|vision_start|>``, one image, ``<|vision_end|>``). The
    start token sits at 0; image tokens at t = 1, (h, w) = 1 + the merged grid row / column; the text after the
    image resumes at ``1 + max(h, w) / merge`` on all three rows; padding (``segment_ids == 0``) gets 0."""
    _, h, w = layout.grid
    gh, gw = h // MERGE, w // MERGE
    n, length = layout.num_image_tokens, segment_ids.shape[1]
    if gh * gw != n or length < n + 2:
        raise ValueError(f"layout of {n} image tokens, grid {layout.grid} and seq_len {length} is inconsistent")
    row = np.zeros((3, length), np.int32)
    row[0, 1:n + 1] = 1
    row[1, 1:n + 1] = 1 + np.repeat(np.arange(gh), gw)
    row[2, 1:n + 1] = 1 + np.tile(np.arange(gw), gh)
    row[:, n + 1:] = 1 + max(gh, gw) + np.arange(length - n - 1)
    return np.where(np.asarray(segment_ids)[None] > 0, row[:, None, :], 0).astype(np.int32)


def make_batch(images: np.ndarray, captions: list[np.ndarray], layout: RowLayout,
               weights: np.ndarray | None = None) -> Batch:
    """One batch (see the module docstring); ``weights`` (0/1 per row) masks out filler rows."""
    rows = caption_rows(captions, layout)
    if weights is not None:
        rows["loss_mask"] = rows["loss_mask"] & (np.asarray(weights)[:, None] > 0)
    pixels = process_images(list(images), layout.processor)
    if tuple(pixels.grid_thw[0]) != layout.grid:
        raise AssertionError(f"processed grid {pixels.grid_thw[0]} != {layout.grid}")  # image_size is a multiple of 32
    return dict(rows, positions=layout_positions(rows["segment_ids"], layout), pixel_values=pixels.pixel_values,
                image_grid_thw=pixels.grid_thw)


@dataclasses.dataclass(frozen=True)
class Pairs:
    """(image, compact caption ids) pairs of one split."""

    images: np.ndarray
    captions: list[np.ndarray]
    texts: tuple[str, ...]


def shrink_and_shift(images: np.ndarray, rng: np.random.Generator, min_scale: float = 0.7) -> np.ndarray:
    """Each ``[S, S, 3]`` uint8 image resized to a random ``[min_scale, 1]`` of its side (Lanczos) and pasted at a
    random position on a white ``S x S`` canvas (the images' own background)."""
    from PIL import Image

    out = np.full_like(images, 255)
    side = images.shape[1]
    for i, image in enumerate(images):
        k = int(round(side * rng.uniform(min_scale, 1.0)))
        small = np.asarray(Image.fromarray(image).resize((k, k), Image.Resampling.LANCZOS))
        top, left = rng.integers(0, side - k + 1, size=2)
        out[i, top:top + k, left:left + k] = small
    return out


class CaptionBatches(Iterator[Batch]):
    """Endless shuffled training batches (a fresh permutation per epoch from ``(seed, epoch)``; the last partial
    batch of an epoch is dropped), optionally augmented (``shrink_and_shift``, drawn from ``(seed, epoch, row)``).
    ``get_state`` / ``set_state`` resume the exact order and augmentation (checkpointing)."""

    def __init__(self, pairs: Pairs, layout: RowLayout, batch_size: int, seed: int, augment: bool = False) -> None:
        if len(pairs.captions) < batch_size:
            raise ValueError(f"config.data.batch_size={batch_size} exceeds the {len(pairs.captions)} training pairs")
        self._pairs, self._layout, self._batch, self._seed = pairs, layout, batch_size, seed
        self._augment = augment
        self._epoch, self._index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(self._pairs.captions))

    def __next__(self) -> Batch:
        if self._index + self._batch > len(self._order):
            self._epoch, self._index = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        take = self._order[self._index:self._index + self._batch]
        images = self._pairs.images[take]
        if self._augment:
            images = shrink_and_shift(images, np.random.default_rng([self._seed, self._epoch, self._index]))
        self._index += self._batch
        return make_batch(images, [self._pairs.captions[i] for i in take], self._layout)

    def get_state(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def set_state(self, state: Mapping[str, int]) -> None:
        self._epoch, self._index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self._epoch)


def fixed_caption_batches(pairs: Pairs, layout: RowLayout, batch_size: int) -> list[Batch]:
    """Every pair once, in order; the last batch is filled with repeats of the first rows, masked out."""
    n = len(pairs.captions)
    batches = []
    for start in range(0, n, batch_size):
        take = np.arange(start, start + batch_size) % n
        weights = (np.arange(start, start + batch_size) < n).astype(np.float32)
        batches.append(make_batch(pairs.images[take], [pairs.captions[i] for i in take], layout, weights))
    return batches


# ------------------------------------------------------------------------------------------------ ranking sets


@dataclasses.dataclass(frozen=True)
class RankingSet:
    """``candidates[i, j]`` indexes ``captions`` (distinct held-out captions); ``true_index[i]`` is the column
    holding image ``i``'s own caption."""

    images: np.ndarray  # [N, S, S, 3] uint8
    captions: list[np.ndarray]  # compact ids of each distinct caption
    texts: tuple[str, ...]
    candidates: np.ndarray  # [N, C] int
    true_index: np.ndarray  # [N] int


def ranking_set(pairs: Pairs, num_candidates: int, seed: int) -> RankingSet:
    """True caption + ``num_candidates - 1`` other distinct captions per image, at a random column."""
    texts = tuple(dict.fromkeys(pairs.texts))
    if len(texts) < num_candidates:
        raise ValueError(f"config.data.num_candidates={num_candidates} exceeds the {len(texts)} distinct held-out "
                         "captions; lower it or raise config.data.heldout_fraction")
    index = {t: i for i, t in enumerate(texts)}
    captions = [pairs.captions[pairs.texts.index(t)] for t in texts]
    rng = np.random.default_rng(seed)
    candidates = np.zeros((len(pairs.texts), num_candidates), np.int64)
    true_index = rng.integers(0, num_candidates, size=len(pairs.texts))
    for i, text in enumerate(pairs.texts):
        others = np.delete(np.arange(len(texts)), index[text])
        row = rng.choice(others, size=num_candidates - 1, replace=False)
        candidates[i] = np.insert(row, true_index[i], index[text])
    return RankingSet(pairs.images, captions, texts, candidates, true_index)


def ranking_batches(ranking: RankingSet, layout: RowLayout, batch_size: int) -> Iterator[tuple[Batch, np.ndarray]]:
    """Batches of (image, candidate caption) rows, row-major over ``candidates``, with the number of real rows
    per batch as ``valid`` (the last batch is filled with repeats)."""
    pairs = [(i, j) for i in range(ranking.candidates.shape[0]) for j in range(ranking.candidates.shape[1])]
    for start in range(0, len(pairs), batch_size):
        chunk = [pairs[k % len(pairs)] for k in range(start, start + batch_size)]
        images = ranking.images[[i for i, _ in chunk]]
        captions = [ranking.captions[ranking.candidates[i, j]] for i, j in chunk]
        yield make_batch(images, captions, layout), np.asarray(min(batch_size, len(pairs) - start))


def score_candidates(ranking: RankingSet, layout: RowLayout, batch_size: int,
                     log_likelihood: Callable[[Batch], np.ndarray]) -> np.ndarray:
    """``[N, C]`` summed caption log-likelihoods; ``log_likelihood(batch)`` returns one value per row (e.g.
    ``qwen35_jax.train.caption_ranking.caption_log_likelihood`` of the model's logits)."""
    flat = []
    for batch, valid in ranking_batches(ranking, layout, batch_size):
        flat.append(np.asarray(log_likelihood(batch), np.float64)[:int(valid)])
    return np.concatenate(flat).reshape(ranking.candidates.shape)


def caption_priors(ranking: RankingSet, layout: RowLayout, batch_size: int,
                   log_likelihood: Callable[[Batch], np.ndarray]) -> np.ndarray:
    """``[len(captions)]`` log-likelihood of each distinct caption given a blank (white) image: the model's
    image-independent preference, e.g. for short or frequent captions. ``scores - priors[candidates]`` ranks by
    pointwise mutual information instead of raw likelihood."""
    k = len(ranking.captions)
    blank = RankingSet(np.full((k, *ranking.images.shape[1:]), 255, np.uint8), ranking.captions, ranking.texts,
                       np.arange(k)[:, None], np.zeros(k, np.int64))
    return score_candidates(blank, layout, batch_size, log_likelihood)[:, 0]


def rank_metrics(scores: np.ndarray, true_index: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy and mean rank (1 = best) of the true column; ties count against the true caption."""
    scores = np.asarray(scores, np.float64)
    true_index = np.asarray(true_index)
    if scores.ndim != 2 or true_index.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [N, C] and true_index [N]; got {scores.shape} and {true_index.shape}")
    true = scores[np.arange(scores.shape[0]), true_index]
    rank = np.sum(scores >= true[:, None], axis=1)  # itself + every other caption scoring at least as high
    c = scores.shape[1]
    return {"top1": float(np.mean(rank == 1)), "mean_rank": float(np.mean(rank)), "images": int(scores.shape[0]),
            "candidates": int(c), "chance_top1": 1.0 / c, "chance_mean_rank": (c + 1) / 2}


# ------------------------------------------------------------------------------------------------ entry point


@dataclasses.dataclass
class CaptionData:
    """Everything a training run and the ranking evaluation need (see the module docstring).

    ``validation[source]``: every held-out pair once (the last batch filled with masked repeats).
    ``ranking[source]``: only sources whose held-out set has at least ``num_candidates`` distinct captions (the
    digits have exactly 10, so with 10 candidates their ranking is 10-way digit classification)."""

    config: CaptionDataConfig
    train: CaptionBatches
    validation: dict[str, list[Batch]]
    ranking: dict[str, RankingSet]
    layout: RowLayout
    vocab: CompactVocab
    special_ids: dict[str, int]  # ModelConfig fields: image/video/vision start/end token ids, eos_token_id
    train_pairs: int

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def model_overrides(self) -> dict[str, int]:
        """``ModelConfig.replace(**overrides)``: compact vocab size and the compact special-token ids."""
        return {"vocab_size": self.vocab.size, **self.special_ids}


def prepare_caption_data(data_config: Mapping[str, Any] | CaptionDataConfig, workdir: str) -> CaptionData:
    """Render / load the sources, split, build the compact vocabulary (saved as ``workdir/compact_vocab.json``),
    and return training / validation batches and the ranking sets."""
    config = data_config if isinstance(data_config, CaptionDataConfig) else CaptionDataConfig.from_mapping(
        data_config)
    tokenizer = get_tokenizer()
    os.makedirs(workdir, exist_ok=True)
    sets = [load_source(name, config, workdir) for name in config.source_names]
    encoded = {s.name: [np.asarray(tokenizer.encode(c), np.int64) for c in s.captions] for s in sets}
    splits = {s.name: heldout_split(len(s.captions), config.heldout_fraction, config.split_seed, i)
              for i, s in enumerate(sets)}

    special_real = {field: tokenizer.special_id(tok) for field, tok in VISION_SPECIALS.items()}
    special_real["eos_token_id"] = tokenizer.special_id(ENDOFTEXT)
    train_ids = [encoded[s.name][i] for s in sets for i in splits[s.name][0]]
    vocab = CompactVocab.build(train_ids, always_include=tuple(special_real.values()))
    vocab_file = os.path.join(workdir, VOCAB_FILE)
    if os.path.exists(vocab_file):  # a run's vocabulary is never replaced by a different one
        if not np.array_equal(CompactVocab.load(vocab_file).real_ids, vocab.real_ids):
            raise ValueError(f"{vocab_file} holds another vocabulary than config.data gives (different sources or "
                             "split?); use the run's data config or a new workdir")
    else:
        vocab.save(vocab_file)
    special = {field: int(vocab.to_compact(np.asarray([real]))[0]) for field, real in special_real.items()}
    layout = RowLayout(seq_len=config.seq_len, grid=config.grid, num_image_tokens=config.num_image_tokens,
                       vision_start=special["vision_start_token_id"], image_token=special["image_token_id"],
                       vision_end=special["vision_end_token_id"], eos=special["eos_token_id"],
                       processor=ImageProcessorConfig(min_pixels=config.image_size ** 2,
                                                      max_pixels=config.image_size ** 2))
    longest = max(len(ids) for ids in encoded.values() for ids in ids)
    if longest > layout.max_caption_tokens():
        raise ValueError(f"config.data.seq_len={config.seq_len} is too short: the longest caption has {longest} "
                         f"tokens; use seq_len >= {longest + config.num_image_tokens + 3}")

    def pairs(s: CaptionSet, index: np.ndarray) -> Pairs:
        return Pairs(s.images[index], [vocab.to_compact(encoded[s.name][i]) for i in index],
                     tuple(s.captions[i] for i in index))

    train_parts = [pairs(s, splits[s.name][0]) for s in sets]
    train = Pairs(np.concatenate([p.images for p in train_parts]), [c for p in train_parts for c in p.captions],
                  tuple(t for p in train_parts for t in p.texts))
    heldout = {s.name: pairs(s, splits[s.name][1]) for s in sets}
    validation = {name: fixed_caption_batches(p, layout, config.batch_size) for name, p in heldout.items()}
    ranking = {name: ranking_set(p, config.num_candidates, config.rank_seed) for name, p in heldout.items()
               if len(set(p.texts)) >= config.num_candidates}
    batches = CaptionBatches(train, layout, config.batch_size, config.seed, config.augment)
    return CaptionData(config=config, train=batches,
                       validation=validation, ranking=ranking, layout=layout, vocab=vocab, special_ids=special,
                       train_pairs=len(train.captions))
