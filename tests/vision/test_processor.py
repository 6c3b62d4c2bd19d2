"""Image / video-frame processor against transformers' Qwen2VLImageProcessorPil (real images, stored reference)."""

import numpy as np
import pytest
from PIL import Image

from qwen35_jax.data.images import (
    ImageProcessorConfig,
    frame_timestamps,
    process_images,
    process_video,
    smart_resize,
    smart_resize_video,
)


def _config(ref) -> ImageProcessorConfig:
    lo, hi = (int(v) for v in ref["processor_pixels"])
    vlo, vhi = (int(v) for v in ref["video_processor_pixels"])
    return ImageProcessorConfig(min_pixels=lo, max_pixels=hi, video_min_pixels=vlo, video_max_pixels=vhi)


def test_real_images_equal_transformers(vl_case):
    ref, _ = vl_case("vl_dense")
    out = process_images([ref["image_china"], ref["image_flower"], ref["image_flower"]], _config(ref))
    assert out.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(out.grid_thw, ref["image_grid_thw"])
    np.testing.assert_array_equal(out.pixel_values, ref["pixel_values"])  # bit-identical


def test_other_branches_equal_transformers(vl_case):
    """Upscaling to min_pixels, an odd aspect ratio, grayscale and RGBA PIL images (alpha on white)."""
    ref, _ = vl_case("vl_dense")
    images = [ref["proc_small"], ref["proc_wide"], Image.fromarray(ref["proc_gray"], mode="L"),
              Image.fromarray(ref["proc_rgba"], mode="RGBA")]
    out = process_images(images, _config(ref))
    np.testing.assert_array_equal(out.grid_thw, ref["proc_image_grid_thw"])
    np.testing.assert_array_equal(out.pixel_values, ref["proc_pixel_values"])


def test_video_frames_layout_equals_transformers_patchify(vl_case):
    ref, _ = vl_case("vl_dense")
    out = process_video(ref["video_frames"], _config(ref))  # 3 frames: the last is repeated to fill 2 slices
    np.testing.assert_array_equal(out.grid_thw, ref["video_grid_thw"])
    np.testing.assert_array_equal(out.pixel_values, ref["pixel_values_videos"])


def test_video_smart_resize_equals_transformers(vl_case):
    ref, _ = vl_case("vl_dense")
    for frames, h, w, lo, hi, out_h, out_w in ref["video_smart_resize"].tolist():
        assert smart_resize_video(frames, h, w, 2, 32, lo, hi) == (out_h, out_w)


def test_image_smart_resize_defaults_and_static_frame_equals_image():
    assert smart_resize(427, 640) == (416, 640)  # already within [65536, 16777216]: nearest multiples of 32
    assert smart_resize(100, 100) == (256, 256)  # upscaled to reach min_pixels = 256²
    h, w = smart_resize(8000, 6000)
    assert h * w <= 16777216 and h % 32 == 0 and w % 32 == 0
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    config = ImageProcessorConfig(min_pixels=4096, max_pixels=16384, video_min_pixels=4096, video_max_pixels=65536)
    # A video of two identical frames is the image (the image fills both temporal slots).
    np.testing.assert_array_equal(process_video(np.stack([frame, frame]), config).pixel_values,
                                  process_images([frame], config).pixel_values)


def test_frame_timestamps():
    assert frame_timestamps([0, 12, 24, 36], fps=24) == [0.25, 1.25]
    assert frame_timestamps([0, 10, 20], fps=10) == [0.5, 2.0]  # last frame repeated


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        process_images([np.zeros((10, 40, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"RGB \[height, width, 3\]"):
        process_images([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match=r"RGB \[height, width, 3\]"):
        process_images([np.zeros((64, 64, 4), np.uint8)])
    with pytest.raises(ValueError, match="must be uint8"):
        process_images([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="aspect ratio"):
        process_images([np.zeros((16, 4000, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least temporal_patch_size=2 frames"):
        process_video(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="PIL.Image.Image or a uint8"):
        process_images(["not an image"])
