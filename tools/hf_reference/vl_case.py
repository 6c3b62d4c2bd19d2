"""Inputs and reference arrays of the vision-language fixtures (``vl_dense``, ``vl_moe``).

Runs in the reference environment (needs Pillow and scikit-learn besides torch/transformers). The prompt holds REAL
images — scikit-learn's bundled ``china.jpg`` and a crop of ``flower.jpg`` — processed by transformers'
``Qwen2VLImageProcessorPil`` (the Qwen3.5 image processor without torchvision), and a 3-frame video of real crops.
The video processor of transformers needs torchvision (not installed: it would pull another torch), so the video
pixels are the image path's rescale/normalise of frames already at a multiple of 32 px, laid out by transformers'
own ``Qwen3VLVideoProcessor.patchify``.

Batch (B=2, T=46), ``IMG_x`` = ``<|image_pad|>`` x merged tokens, ``VS``/``VE`` = vision start/end, ``t`` random text:
  row 0: t5 VS IMG_china(12) VE t3 VS IMG_flower(15) VE t7
  row 1: t3 VS IMG_flower(15) VE t2 VS VID(6) VE t2 VS VID(6) VE t6   (the t2 before each slice = its timestamp text)
so ``image_grid_thw`` = [china, flower, flower] and ``video_grid_thw`` = [[2, 4, 6]].
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import PIL
import sklearn
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_sample_image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

# The module itself (the lazy package attribute is a torchvision-requiring placeholder); only its pure-Python
# ``smart_resize`` and the torch ``patchify`` are used.
video_processing_qwen3_vl = importlib.import_module("transformers.models.qwen3_vl.video_processing_qwen3_vl")

VISION_SIZES: dict[str, Any] = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    in_channels=3,
    out_hidden_size=64,  # = text hidden_size
    num_position_embeddings=64,  # 8x8 learned table, resampled to 6x8, 6x10 and 4x6 grids
)
TOKENS: dict[str, int] = dict(image_token_id=250, video_token_id=253, vision_start_token_id=251,
                              vision_end_token_id=252)
TEXT_ID_LIMIT = 248  # random text ids stay below the special ids
MIN_PIXELS, MAX_PIXELS = 4096, 16384  # processor limits: china 427x640 -> 96x128, flower crop 200x350 -> 96x160
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 4096, 65536
MEAN = STD = [0.5, 0.5, 0.5]
SEQ_LEN = 46


def image_processor() -> Qwen2VLImageProcessorPil:
    """The Qwen3.5 preprocessor settings (numerics §2.10) with small pixel limits."""
    return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=MEAN,
                                    image_std=STD, size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})


def real_images() -> dict[str, np.ndarray]:
    """Two real photographs of different sizes (uint8 HWC RGB)."""
    china = load_sample_image("china.jpg")  # 427 x 640
    flower = load_sample_image("flower.jpg")[100:300, 150:500]  # 200 x 350 crop
    return {"image_china": np.ascontiguousarray(china), "image_flower": np.ascontiguousarray(flower)}


def video_frames() -> np.ndarray:
    """3 frames (odd: the processor repeats the last) of 64x96 crops panning over china.jpg."""
    china = load_sample_image("china.jpg")
    return np.stack([china[100 + 40 * i: 164 + 40 * i, 200 + 50 * i: 296 + 50 * i] for i in range(3)])


def processor_extras() -> tuple[dict[str, np.ndarray], list[Any]]:
    """Images that exercise the other processor branches: upscaling to min_pixels, an odd aspect ratio, a grayscale
    and an RGBA PIL image (converted to RGB; alpha composited on white)."""
    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
    small = np.ascontiguousarray(flower[200:220, 300:340])  # 20 x 40 -> upscaled
    wide = np.ascontiguousarray(china[50:125, 10:343])  # 75 x 333
    gray = np.ascontiguousarray(china[0:150, 0:100].mean(-1).astype(np.uint8))  # mode "L"
    rgba = np.concatenate([flower[0:90, 0:130], (np.arange(90 * 130) % 256).reshape(90, 130, 1)], -1).astype(np.uint8)
    arrays = {"proc_small": small, "proc_wide": wide, "proc_gray": gray, "proc_rgba": np.ascontiguousarray(rgba)}
    inputs = [small, wide, Image.fromarray(gray, mode="L"), Image.fromarray(arrays["proc_rgba"], mode="RGBA")]
    return arrays, inputs


def video_pixels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_values_videos`` / ``video_grid_thw`` of ``frames`` (no resize: sizes are multiples of 32)."""
    ip = image_processor()
    chw = [ip.normalize(ip.rescale(np.moveaxis(f, -1, 0), 1 / 255), MEAN, STD) for f in frames]
    video = torch.from_numpy(np.stack(chw))[None]  # [1, F, C, H, W]
    processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    patches, grid_t, grid_h, grid_w = processor.patchify(video, patch_size=16, merge_size=2, temporal_patch_size=2)
    return patches[0].numpy(), np.array([[grid_t, grid_h, grid_w]], np.int64)


def video_resize_table() -> np.ndarray:
    """Rows ``(frames, h, w, min_pixels, max_pixels, out_h, out_w)`` of transformers' video ``smart_resize``."""
    rows = []
    for frames, h, w, lo, hi in [(3, 64, 96, 4096, 65536), (4, 427, 640, 4096, 65536), (8, 20, 50, 32768, 10 ** 6),
                                 (2, 33, 700, 4096, 65536), (5, 480, 360, 131072, 786432)]:
        out_h, out_w = video_processing_qwen3_vl.smart_resize(frames, h, w, temporal_factor=2, factor=32,
                                                              min_pixels=lo, max_pixels=hi)
        rows.append([frames, h, w, lo, hi, out_h, out_w])
    return np.array(rows, np.int64)


def _text(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, TEXT_ID_LIMIT, (n,), generator=gen).tolist()


def build_prompt(seed: int, merged: dict[str, int], video_slice_tokens: int) -> torch.Tensor:
    """Token ids [2, SEQ_LEN] with image / video placeholders already expanded (see module docstring)."""
    gen = torch.Generator().manual_seed(seed + 2)
    vs, ve = TOKENS["vision_start_token_id"], TOKENS["vision_end_token_id"]

    def image(n: int) -> list[int]:
        return [vs] + [TOKENS["image_token_id"]] * n + [ve]

    def video_slice() -> list[int]:
        return _text(gen, 2) + [vs] + [TOKENS["video_token_id"]] * video_slice_tokens + [ve]

    row0 = _text(gen, 5) + image(merged["china"]) + _text(gen, 3) + image(merged["flower"]) + _text(gen, 7)
    row1 = _text(gen, 3) + image(merged["flower"]) + video_slice() + video_slice() + _text(gen, 6)
    assert len(row0) == len(row1) == SEQ_LEN, (len(row0), len(row1))
    return torch.tensor([row0, row1], dtype=torch.long)


def mm_token_type_ids(ids: torch.Tensor) -> torch.Tensor:
    return (ids == TOKENS["image_token_id"]).int() + 2 * (ids == TOKENS["video_token_id"]).int()


def make_vl_inputs(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Model kwargs (transformers names) and the raw inputs / processor references to store."""
    images = real_images()
    ip = image_processor()
    processed = ip([images["image_china"], images["image_flower"], images["image_flower"]], return_tensors="np")
    grid = processed["image_grid_thw"]
    merged = {"china": int(grid[0].prod() // 4), "flower": int(grid[1].prod() // 4)}
    frames = video_frames()
    pixel_values_videos, video_grid = video_pixels(frames)
    ids = build_prompt(seed, merged, int(video_grid[0, 1] * video_grid[0, 2] // 4))
    kwargs = {
        "input_ids": ids,
        "pixel_values": torch.from_numpy(processed["pixel_values"]),
        "image_grid_thw": torch.from_numpy(grid),
        "pixel_values_videos": torch.from_numpy(pixel_values_videos),
        "video_grid_thw": torch.from_numpy(video_grid),
        "mm_token_type_ids": mm_token_type_ids(ids),
    }
    extra_arrays, extra_inputs = processor_extras()
    extra = ip(extra_inputs, return_tensors="np")
    stored = {
        **images,
        "video_frames": frames,
        **extra_arrays,
        "proc_pixel_values": extra["pixel_values"],
        "proc_image_grid_thw": extra["image_grid_thw"],
        "processor_pixels": np.array([MIN_PIXELS, MAX_PIXELS], np.int64),
        "video_processor_pixels": np.array([VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS], np.int64),
        "video_smart_resize": video_resize_table(),
    }
    return kwargs, stored


@torch.no_grad()
def vl_reference_arrays(model: torch.nn.Module, kwargs: dict[str, torch.Tensor], stored: dict[str, np.ndarray],
                        moe: bool, info: dict[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
    """fp32 forward, vision tower outputs and ``get_rope_index`` positions (plus a masked variant)."""
    out = model(**kwargs, use_cache=False, output_router_logits=moe) if moe else model(**kwargs, use_cache=False)
    inner = model.model
    positions, deltas = inner.get_rope_index(kwargs["input_ids"], kwargs["mm_token_type_ids"],
                                             image_grid_thw=kwargs["image_grid_thw"],
                                             video_grid_thw=kwargs["video_grid_thw"])
    mask = torch.ones_like(kwargs["input_ids"])
    mask[1, :2] = 0  # left padding of row 1: positions skip masked tokens
    positions_masked, deltas_masked = inner.get_rope_index(
        kwargs["input_ids"], kwargs["mm_token_type_ids"], image_grid_thw=kwargs["image_grid_thw"],
        video_grid_thw=kwargs["video_grid_thw"], attention_mask=mask)
    image_out = inner.visual(kwargs["pixel_values"], grid_thw=kwargs["image_grid_thw"])
    video_out = inner.visual(kwargs["pixel_values_videos"], grid_thw=kwargs["video_grid_thw"])
    logits = out.logits.float()
    assert torch.isfinite(logits).all()
    arrays = {
        **{k: v.numpy() for k, v in kwargs.items()},
        **stored,
        "logits": logits.numpy().astype(np.float32),
        "position_ids": positions.numpy().astype(np.int64),
        "rope_deltas": deltas.numpy().astype(np.int64),
        "position_mask": mask.numpy().astype(np.int64),
        "position_ids_masked": positions_masked.numpy().astype(np.int64),
        "rope_deltas_masked": deltas_masked.numpy().astype(np.int64),
        "image_embeds": image_out.pooler_output.float().numpy(),
        "image_last_hidden": image_out.last_hidden_state.float().numpy(),
        "video_embeds": video_out.pooler_output.float().numpy(),
    }
    info["pillow"], info["scikit_learn"] = PIL.__version__, sklearn.__version__
    return arrays, out


def mtp_layer_module(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh full-attention decoder layer of the model's own class: the MTP layer (numerics §2.9)."""
    text = model.model.language_model
    index = text.config.layer_types.index("full_attention")
    return type(text.layers[index])(text.config, index).to(torch.float32)


def mtp_tensors(model: torch.nn.Module, gen: torch.Generator, perturb: Any) -> dict[str, torch.Tensor]:
    """Random ``mtp.*`` tensors with the Hub names (MoE experts per expert, as inferred in numerics §6.1)."""
    h = model.config.text_config.hidden_size
    module = torch.nn.Module()
    module.pre_fc_norm_embedding = torch.nn.Parameter(torch.zeros(h))
    module.pre_fc_norm_hidden = torch.nn.Parameter(torch.zeros(h))
    module.fc = torch.nn.Linear(2 * h, h, bias=False)
    module.norm = torch.nn.Parameter(torch.zeros(h))
    module.layer = mtp_layer_module(model)
    with torch.no_grad():
        for param in module.parameters():  # a defined start (MoE expert tensors are torch.empty)
            if param.ndim == 1:
                param.zero_()
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
        perturb(module, gen)
    state = {
        "mtp.pre_fc_norm_embedding.weight": module.pre_fc_norm_embedding,
        "mtp.pre_fc_norm_hidden.weight": module.pre_fc_norm_hidden,
        "mtp.fc.weight": module.fc.weight,
        "mtp.norm.weight": module.norm,
    }
    for name, value in module.layer.state_dict().items():
        state[f"mtp.layers.0.{name}"] = value
    out = {}
    for name, value in state.items():
        value = value.detach().contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            inter = value.shape[1] // 2
            prefix = name[: -len("gate_up_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = value[e, :inter].contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = value[e, inter:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = value[e].contiguous()
        else:
            out[name] = value
    return out


def add_mtp_and_hub_layout(path: Any, mtp: dict[str, torch.Tensor], fuse: Any) -> dict[str, str]:
    """Rewrite ``model.safetensors`` like a Hub checkpoint: main experts fused, plus the ``mtp.*`` tensors."""
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    state = fuse(load_file(path))
    state.update(mtp)
    save_file(state, path, metadata=metadata or {"format": "pt"})
    return {"mtp_tensors": str(len(mtp))}
