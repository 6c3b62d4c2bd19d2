"""Image and video-frame processor of Qwen3.5 (numerics §2.10 preprocessing), in Pillow + NumPy.

Equals transformers' ``Qwen2VLImageProcessorPil`` with the Qwen3.5 ``preprocessor_config.json`` for images: smart
resize to multiples of ``patch_size·merge_size`` (32) within [min_pixels, max_pixels], Pillow bicubic on uint8,
``x·(1/255)`` (float64, then float32), ``(x − 0.5) / 0.5`` (float32), and patches in merge-block-major order, each
flattened as ``(C, temporal_patch_size, P, P)`` with the image repeated along time.

Videos follow the layout of transformers' ``Qwen3VLVideoProcessor`` (video ``smart_resize``, last frame repeated up
to a multiple of ``temporal_patch_size``, one grid row per clip) but resize each frame with Pillow like the image
path: transformers resizes videos with torchvision, whose bicubic differs from Pillow's. Frame sampling (fps) is the
caller's choice; ``frame_timestamps`` gives the per-slice times the prompt needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

MAX_ASPECT_RATIO = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageProcessorConfig:
    """Qwen3.5 ``preprocessor_config.json`` values (numerics §2.10); video defaults are ``Qwen3VLVideoProcessor``'s."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536  # size.shortest_edge
    max_pixels: int = 16777216  # size.longest_edge
    video_min_pixels: int = 131072  # 128·32·32, over all frames
    video_max_pixels: int = 786432  # 32·32·768
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels",
                     "video_min_pixels", "video_max_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ImageProcessorConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if self.min_pixels > self.max_pixels or self.video_min_pixels > self.video_max_pixels:
            raise ValueError("ImageProcessorConfig: min_pixels must not exceed max_pixels (images and videos)")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


class ProcessedVision(NamedTuple):
    pixel_values: np.ndarray  # [Σ t·h·w, 3·temporal_patch_size·patch_size²] float32
    grid_thw: np.ndarray  # [n, 3] int64 (t, h, w) in patches


def _check_aspect(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image of {height}x{width} pixels has an aspect ratio above {MAX_ASPECT_RATIO}; crop or "
                         "pad it first")


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 16777216) -> tuple[int, int]:
    """Sides rounded to multiples of ``factor``, rescaled (aspect kept) so ``min_pixels ≤ h·w ≤ max_pixels``."""
    _check_aspect(height, width)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_video(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = 131072, max_pixels: int = 786432) -> tuple[int, int]:
    """The video variant: the pixel budget counts all frames (rounded to ``temporal_factor``); tiny frames are first
    scaled up so their short side reaches ``factor``."""
    if num_frames < temporal_factor:
        raise ValueError(f"a video needs at least temporal_patch_size={temporal_factor} frames; got {num_frames} "
                         "(repeat the frame, or process a single frame as an image)")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_aspect(height, width)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_array(image: object, patch_size: int = 16) -> np.ndarray:
    """A PIL image of any mode (converted like transformers: alpha composited on white) or a uint8 ``[H, W, 3]``
    array → uint8 ``[H, W, 3]``. Other arrays are rejected rather than guessed at."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image arrays must be RGB [height, width, 3]; got shape {image.shape}. Convert "
                             "grayscale / RGBA / channel-first images first, e.g. "
                             "np.asarray(PIL.Image.fromarray(a).convert('RGB'))")
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 in [0, 255]; got dtype {image.dtype} (multiply float "
                             "images in [0, 1] by 255 and round, or pass a PIL image)")
        array = image
    else:
        raise ValueError(f"expected a PIL.Image.Image or a uint8 [H, W, 3] numpy array; got {type(image).__name__}")
    height, width = array.shape[:2]
    if height < patch_size or width < patch_size:
        raise ValueError(f"image of {height}x{width} pixels is smaller than one {patch_size}x{patch_size} patch; "
                         "upscale or pad it before processing")
    return np.ascontiguousarray(array)


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow bicubic on uint8 ``[H, W, 3]`` (Pillow returns a copy when the size is unchanged)."""
    return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC))


def normalize(image: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → float32 ``[3, H, W]``: rescale in float64 then cast, normalise in float32."""
    x = (np.moveaxis(image, -1, 0).astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, np.float32)[:, None, None]
    std = np.asarray(config.image_std, np.float32)[:, None, None]
    return (x - mean) / std


def patchify(frames: np.ndarray, config: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``[F, C, H, W]`` (F a multiple of temporal_patch_size) → ``[t·h·w, C·Tp·P·P]`` in merge-block-major order."""
    f, c, height, width = frames.shape
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    gt, gh, gw = f // tp, height // p, width // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # → (t, block row, block col, in-block row, in-block col, C, Tp, P, P)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)


def process_image(image: object, config: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    rgb = to_rgb_array(image, config.patch_size)
    height, width = smart_resize(rgb.shape[0], rgb.shape[1], config.factor, config.min_pixels, config.max_pixels)
    chw = normalize(resize_bicubic(rgb, height, width), config)
    frames = np.broadcast_to(chw[None], (config.temporal_patch_size, *chw.shape))  # the image fills both time slots
    return patchify(frames, config)


def process_images(images: Sequence[object], config: ImageProcessorConfig | None = None) -> ProcessedVision:
    """``pixel_values`` and ``image_grid_thw`` for a list of images, concatenated in order (transformers' names)."""
    config = config or ImageProcessorConfig()
    if isinstance(images, (np.ndarray, Image.Image)):
        images = [images]
    if not images:
        raise ValueError("process_images needs at least one image")
    patches, grids = zip(*(process_image(image, config) for image in images), strict=True)
    return ProcessedVision(np.concatenate(patches), np.asarray(grids, np.int64))


def process_video(frames: object, config: ImageProcessorConfig | None = None) -> ProcessedVision:
    """One clip of already-sampled frames (uint8 ``[F, H, W, 3]`` or a list of images) → ``pixel_values_videos``
    ``[t·h·w, 1536]`` and ``video_grid_thw [1, 3]`` with ``t = ceil(F / temporal_patch_size)``."""
    config = config or ImageProcessorConfig()
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"video frames must be uint8 [frames, height, width, 3]; got shape {frames.shape}")
    rgb = [to_rgb_array(frame, config.patch_size) for frame in frames]
    if len({frame.shape for frame in rgb}) != 1:
        raise ValueError(f"all frames of a video must have one size; got {sorted({f.shape for f in rgb})}")
    height, width = smart_resize_video(len(rgb), rgb[0].shape[0], rgb[0].shape[1], config.temporal_patch_size,
                                       config.factor, config.video_min_pixels, config.video_max_pixels)
    chw = np.stack([normalize(resize_bicubic(frame, height, width), config) for frame in rgb])
    if pad := -len(rgb) % config.temporal_patch_size:
        chw = np.concatenate([chw, np.repeat(chw[-1:], pad, axis=0)])
    patches, grid = patchify(chw, config)
    return ProcessedVision(patches, np.asarray([grid], np.int64))


def frame_timestamps(frame_indices: Sequence[int], fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal slice: the mean time of its first and last frame (last frame repeated to fill)."""
    indices = list(frame_indices)
    if not indices or fps <= 0:
        raise ValueError("frame_timestamps needs at least one frame index and a positive fps")
    indices += [indices[-1]] * (-len(indices) % temporal_patch_size)
    seconds = [i / fps for i in indices]
    step = temporal_patch_size
    return [(seconds[i] + seconds[i + step - 1]) / 2 for i in range(0, len(seconds), step)]
