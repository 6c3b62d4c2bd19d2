"""Multimodal fusion (numerics §2.11): placeholder expansion, vision-embedding scatter, and 3-row mRoPE positions.

Everything that depends on the prompt's token layout (run boundaries, grid sizes) is host-side NumPy on concrete
inputs — the equivalent of transformers' ``get_rope_index`` — while the embedding scatter is a jit-friendly gather.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.vision import Grid, VisionTower, normalize_grids

TEXT, IMAGE, VIDEO = 0, 1, 2
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def _tokens_per_grid(grid: Grid, merge: int) -> int:
    t, h, w = grid
    return t * h * w // (merge * merge)


def _optional_grids(grid_thw: object, name: str) -> tuple[Grid, ...]:
    return () if grid_thw is None else normalize_grids(grid_thw, name)


# ------------------------------------------------------------------------------------------------ prompt expansion


def expand_prompt(text: str, image_grid_thw: object = None, video_grid_thw: object = None, *,
                  video_timestamps: Sequence[Sequence[float]] | None = None, merge_size: int = 2) -> str:
    """Expand each ``<|image_pad|>`` to ``t·h·w/merge²`` copies, and each ``<|video_pad|>`` to one
    ``"<{sec:.1f} seconds><|vision_start|>" + <|video_pad|>×(h·w/merge²) + "<|vision_end|>"`` per temporal slice
    (transformers' ``Qwen3VLProcessor``; ``video_timestamps[v]`` from ``images.frame_timestamps``)."""
    images = _optional_grids(image_grid_thw, "image_grid_thw")
    videos = _optional_grids(video_grid_thw, "video_grid_thw")
    if text.count(IMAGE_PAD) != len(images):
        raise ValueError(f"the prompt has {text.count(IMAGE_PAD)} {IMAGE_PAD} placeholder(s) but {len(images)} "
                         "image(s) were given; put exactly one placeholder per image, in order")
    if text.count(VIDEO_PAD) != len(videos):
        raise ValueError(f"the prompt has {text.count(VIDEO_PAD)} {VIDEO_PAD} placeholder(s) but {len(videos)} "
                         "video(s) were given; put exactly one placeholder per video, in order")
    if videos and (video_timestamps is None or len(video_timestamps) != len(videos)):
        raise ValueError("expanding videos needs video_timestamps: one list of per-slice seconds per video")
    parts = text.replace(VIDEO_PAD, "\0v\0").replace(IMAGE_PAD, "\0i\0").split("\0")
    out, image_iter, video_iter = [], iter(images), iter(zip(videos, video_timestamps or (), strict=False))
    for part in parts:
        if part == "i":
            out.append(IMAGE_PAD * _tokens_per_grid(next(image_iter), merge_size))
        elif part == "v":
            (t, h, w), seconds = next(video_iter)
            if len(seconds) != t:
                raise ValueError(f"a video with grid t={t} needs {t} timestamps; got {len(seconds)}")
            per_slice = h * w // (merge_size * merge_size)
            out.extend(f"<{s:.1f} seconds>{VISION_START}{VIDEO_PAD * per_slice}{VISION_END}" for s in seconds)
        else:
            out.append(part)
    return "".join(out)


def expand_image_tokens(token_ids: Sequence[int], image_grid_thw: object, image_token_id: int,
                        merge_size: int = 2) -> list[int]:
    """Token-level version for images: each single ``image_token_id`` becomes ``t·h·w/merge²`` copies."""
    grids = normalize_grids(image_grid_thw, "image_grid_thw")
    count = sum(1 for i in token_ids if i == image_token_id)
    if count != len(grids):
        raise ValueError(f"the prompt has {count} image token(s) (id {image_token_id}) but {len(grids)} image(s) "
                         "were given; put exactly one per image before expanding")
    grid_iter, out = iter(grids), []
    for token in token_ids:
        out.extend([token] * (_tokens_per_grid(next(grid_iter), merge_size) if token == image_token_id else 1))
    return out


# ------------------------------------------------------------------------------------------------ positions


def mm_token_types(input_ids: object, config: ModelConfig) -> np.ndarray:
    """0 for text, 1 for ``<|image_pad|>``, 2 for ``<|video_pad|>`` (what the transformers processor returns)."""
    ids = np.asarray(input_ids)
    return np.where(ids == config.image_token_id, IMAGE, np.where(ids == config.video_token_id, VIDEO, TEXT))


def _vision_run_positions(start: int, grid: Grid, merge: int) -> np.ndarray:
    """``[3, t·gh·gw]`` for one image (or one video slice): T = start + t, H/W = start + merged row/col."""
    t, h, w = grid
    gh, gw = h // merge, w // merge
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + start


def get_rope_index(input_ids: object, mm_token_type_ids: object = None, image_grid_thw: object = None,
                   video_grid_thw: object = None, attention_mask: object = None, *, spatial_merge_size: int = 2,
                   config: ModelConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """3-row mRoPE positions ``[3, B, T]`` and ``rope_deltas [B, 1]`` (transformers' ``get_rope_index``).

    Runs of equal token type are walked in order: text of length n takes ``cur + arange(n)`` on all rows; an image
    (or one temporal slice of a video: video grids are split per slice) takes T = cur, H/W = cur + merged row/col,
    then ``cur += max(h, w) / merge``. Grids are consumed in order across the batch. Masked tokens
    (``attention_mask == 0``) are skipped and get position 0. ``rope_delta = max(position) + 1 − valid length``.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {ids.shape}")
    if mm_token_type_ids is None:
        if config is None:
            raise ValueError("get_rope_index needs mm_token_type_ids, or config to derive them from the token ids")
        mm_token_type_ids = mm_token_types(ids, config)
    types = np.asarray(mm_token_type_ids)
    if types.shape != ids.shape:
        raise ValueError(f"mm_token_type_ids shape {types.shape} must equal input_ids shape {ids.shape}")
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    merge = spatial_merge_size
    images = list(_optional_grids(image_grid_thw, "image_grid_thw"))
    slices = [(1, h, w) for t, h, w in _optional_grids(video_grid_thw, "video_grid_thw") for _ in range(t)]
    queues = {IMAGE: iter(images), VIDEO: iter(slices)}
    used = {IMAGE: 0, VIDEO: 0}
    positions = np.zeros((3, *ids.shape), np.int64)
    deltas = np.zeros((ids.shape[0], 1), np.int64)
    for b in range(ids.shape[0]):
        row_types = types[b][mask[b]]
        chunks, cur = [], 0
        for kind, run in itertools.groupby(row_types.tolist()):
            n = len(list(run))
            if kind == TEXT:
                chunks.append(np.broadcast_to(np.arange(n) + cur, (3, n)))
                cur += n
                continue
            name = "image" if kind == IMAGE else "video slice"
            grid = next(queues[kind], None)
            if grid is None:
                raise ValueError(f"row {b} has more {name} runs than {name}s in image_grid_thw/video_grid_thw; "
                                 "each image needs one grid row (videos: one per temporal slice)")
            used[kind] += 1
            expected = _tokens_per_grid(grid, merge)
            if n != expected:
                raise ValueError(f"row {b}: a run of {n} {name} tokens meets grid (t, h, w) = {grid}, which needs "
                                 f"t·h·w/{merge * merge} = {expected}; expand placeholders with expand_prompt and "
                                 "separate consecutive images / video slices with text (vision start/end tokens)")
            chunks.append(_vision_run_positions(cur, grid, merge))
            cur += max(grid[1], grid[2]) // merge
        row = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
        positions[:, b, mask[b]] = row
        deltas[b, 0] = (row.max() + 1 if row.size else 0) - row.shape[1]
    if used[IMAGE] != len(images) or used[VIDEO] != len(slices):
        raise ValueError(f"the prompt holds {used[IMAGE]} image run(s) and {used[VIDEO]} video slice run(s) but "
                         f"{len(images)} image(s) and {len(slices)} video slice(s) were given")
    return positions, deltas


# ------------------------------------------------------------------------------------------------ embedding fusion


def count_tokens(input_ids: jax.Array, token_id: int) -> int | None:
    """Number of ``token_id`` in concrete ``input_ids`` (None under tracing)."""
    if isinstance(input_ids, jax.core.Tracer):
        return None
    return int(np.sum(np.asarray(input_ids) == token_id))


def scatter_embeddings(embeds: jax.Array, input_ids: jax.Array, features: jax.Array, token_id: int,
                       what: str = "image") -> jax.Array:
    """Replace the rows of ``embeds [B, T, H]`` at ``token_id`` positions, in row-major order, by ``features [N, H]``
    (transformers' ``masked_scatter``)."""
    count = count_tokens(input_ids, token_id)
    if count is not None and count != features.shape[0]:
        raise ValueError(f"{what} features and {what} tokens do not match: the prompt has {count} token(s) with id "
                         f"{token_id} but the vision tower produced {features.shape[0]} {what} embedding(s); expand "
                         "each placeholder to t·h·w/merge² tokens (expand_prompt) and pass one grid row per "
                         f"{what}")
    if features.shape[-1] != embeds.shape[-1]:
        raise ValueError(f"{what} features have width {features.shape[-1]}, text embeddings {embeds.shape[-1]}")
    mask = input_ids == token_id
    order = jnp.cumsum(mask.reshape(-1)).reshape(mask.shape) - 1  # k-th placeholder takes features[k]
    gathered = features.astype(embeds.dtype)[jnp.clip(order, 0, max(features.shape[0] - 1, 0))]
    return jnp.where(mask[..., None], gathered, embeds)


def fuse_vision(visual: VisionTower, config: ModelConfig, input_ids: jax.Array, embeds: jax.Array, *,
                pixel_values: jax.Array | None, image_grid_thw: object, pixel_values_videos: jax.Array | None,
                video_grid_thw: object) -> jax.Array:
    """Text embeddings with image / video placeholder rows replaced by the vision tower's merged outputs."""
    for pixels, grids, kind in ((pixel_values, image_grid_thw, "image"), (pixel_values_videos, video_grid_thw,
                                                                          "video")):
        if pixels is None:
            continue
        if grids is None:
            raise ValueError(f"{kind} pixel values need {kind}_grid_thw (one (t, h, w) row per {kind})")
        token_id = config.image_token_id if kind == "image" else config.video_token_id
        features = visual(pixels, grids).pooler_output
        embeds = scatter_embeddings(embeds, input_ids, features, token_id, kind)
    return embeds


def multimodal_positions(config: ModelConfig, input_ids: jax.Array, mm_token_type_ids: object,
                         image_grid_thw: object, video_grid_thw: object, attention_mask: object) -> jax.Array:
    """``[3, B, T]`` positions for a concrete prompt (the model call's default when vision inputs are given)."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
        raise ValueError("multimodal positions depend on the prompt layout: under jit pass positions=[3, B, T] "
                         "computed with qwen35_jax.model.multimodal.get_rope_index outside the traced function")
    merge = config.vision.spatial_merge_size if config.vision else 2
    positions, _ = get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask,
                                  spatial_merge_size=merge, config=config)
    return jnp.asarray(positions, jnp.int32)

