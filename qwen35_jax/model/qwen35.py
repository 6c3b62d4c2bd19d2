"""The Qwen3.5 / Qwen3-Next language model: embedding → scanned hybrid stack → final norm → LM head.

One forward serves training (no cache) and generation: with a ``HybridCache`` (``init_cache``) the call continues
the cached sequence (a prompt, possibly in pieces, or one decode token) and returns the updated cache.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.cache import HybridCache
from qwen35_jax.model.decoder import DecoderStack, LayerInputs
from qwen35_jax.model.moe import RouterStats, load_balancing_loss
from qwen35_jax.model.mtp import MultiTokenPredictor
from qwen35_jax.model.multimodal import fuse_vision, multimodal_positions
from qwen35_jax.model.norms import RMSNorm
from qwen35_jax.model.parametrization import output_multiplier, scale_hidden_init
from qwen35_jax.model.params import dense, make_param
from qwen35_jax.model.rope import rope_cos_sin
from qwen35_jax.model.vision import VisionTower
from qwen35_jax.ops.gated_delta_rule.chunked import CHUNK
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.parallel.sharding import sequence_shards


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CausalLMOutput:
    logits: jax.Array | None  # [B, T, V] in the compute dtype; None with compute_logits=False
    hidden_states: jax.Array  # [B, T, H] after the final norm
    aux_loss: jax.Array  # [] fp32 load-balancing loss (numerics §3), 0 for dense models
    router_stats: RouterStats | None
    cache: HybridCache | None = None  # the updated cache when one was given


def check_token_ids(input_ids: jax.Array, vocab_size: int) -> None:
    """Out-of-range ids would silently gather garbage under jit, so check concrete inputs here."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {input_ids.shape}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integers; got dtype {input_ids.dtype}")
    if isinstance(input_ids, jax.core.Tracer):
        return
    ids = np.asarray(input_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(f"token id(s) {sorted(set(bad.tolist()))[:8]} out of range [0, vocab_size={vocab_size}); "
                         "check the tokenizer / vocabulary matches the model config")


class Qwen35ForCausalLM(nnx.Module):
    """Text model with optional MTP head and vision tower parameters (present when the config asks for them)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, runtime: Runtime | None = None):
        """``runtime`` (default ``Runtime.local()``: one device of the default backend) is where the model runs: every
        layer chooses its compute for it here (``qwen35_jax.model.build.build_model`` also places the parameters on
        its mesh)."""
        runtime = Runtime.local() if runtime is None else runtime
        self.config = config
        self.backend = runtime.backend
        # Prompt widths for prefill: with the sequence split over n devices (numerics §11), whole 64-token GDN chunks
        # per device; generation left-pads prompts to a multiple of it (padding is a segment of its own).
        shards = sequence_shards(runtime)
        self.prompt_multiple = CHUNK * shards if shards > 1 else 1
        pdt = jnp.dtype(config.param_dtype)
        self.embed_tokens = make_param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pdt)
        self.decoder = DecoderStack(config, runtime=runtime, rngs=rngs)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        # Optional parts are explicit pytree data (nnx.data) so None and a module share one attribute status.
        self.lm_head = nnx.data(None if config.tie_word_embeddings else make_param(
            rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pdt))
        self.mtp = nnx.data(MultiTokenPredictor(config, runtime=runtime, rngs=rngs)
                            if config.mtp_num_hidden_layers else None)
        self.visual = nnx.data(VisionTower(config.vision, param_dtype=pdt, rngs=rngs, dtype=jnp.dtype(config.dtype))
                               if config.vision else None)
        self.logit_multiplier = output_multiplier(config)  # µP's 1 / m (numerics §12); None under "sp"
        scale_hidden_init(self, config)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens[...][input_ids].astype(jnp.dtype(self.config.dtype))

    def unembed(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:
            logits = dense(hidden, self.embed_tokens, "bte,ve->btv", self.backend)
        else:
            logits = dense(hidden, self.lm_head, "bte,ev->btv", self.backend)
        return logits if self.logit_multiplier is None else logits * self.logit_multiplier

    def init_cache(self, batch: int, max_length: int) -> HybridCache:
        """An empty cache for ``batch`` rows of at most ``max_length`` tokens (prompt, padding included, + new)."""
        layers = self.decoder.init_cache(batch, max_length, jnp.dtype(self.config.dtype))
        return HybridCache(layers=layers, positions=jnp.zeros((batch,), jnp.int32))

    def layer_inputs(self, input_ids: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None,
                     attention_mask: jax.Array | None, *, start: jax.Array | None = None) -> LayerInputs:
        """Rope tables and segments of ``input_ids [B, T]``. Default positions: ``arange(T)``, or with ``start [B]``
        (a cache's next positions) ``start`` plus the count of real tokens before each one."""
        batch, length = input_ids.shape
        if segment_ids is None:
            # An HF-style 0/1 attention mask is a segmentation with padding as segment 0 (left padding then
            # starts a fresh segment at the first real token: no GDN state or attention crosses the pad).
            segment_ids = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        segment_ids = segment_ids.astype(jnp.int32)
        if segment_ids.shape != (batch, length):
            raise ValueError(f"segment_ids/attention_mask must be [batch, seq] = {(batch, length)}; "
                             f"got {segment_ids.shape}")
        if positions is None and start is not None:
            positions = start[:, None] + jnp.maximum(jnp.cumsum(segment_ids != 0, axis=1, dtype=jnp.int32) - 1, 0)
        elif positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        cos, sin = rope_cos_sin(self.config, positions, jnp.dtype(self.config.dtype))
        return LayerInputs(cos=cos, sin=sin, segment_ids=segment_ids, token_mask=segment_ids != 0)

    def __call__(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 pixel_values: jax.Array | None = None, image_grid_thw: object = None,
                 pixel_values_videos: jax.Array | None = None, video_grid_thw: object = None,
                 mm_token_type_ids: object = None, cache: HybridCache | None = None,
                 compute_logits: bool = True) -> CausalLMOutput:
        """Logits for ``input_ids [B, T]`` (``compute_logits=False``: only the normed hidden states, logits None).

        ``segment_ids [B, T]``: tokens with equal ids attend to and recur with each other only (packed documents);
        0 marks padding. ``attention_mask`` (HF-style 1/0) is accepted instead. ``positions``: ``[B, T]`` text
        positions or ``[3, B, T]`` multimodal (T, H, W) rows; default ``arange(T)``.

        Vision inputs use transformers' names and layouts (numerics §2.10-2.11): ``pixel_values [Σ t·h·w, 1536]`` with
        ``image_grid_thw [n, 3]`` (static ints), likewise ``pixel_values_videos`` / ``video_grid_thw``; their merged
        embeddings replace the placeholder tokens in order. Without ``positions`` the mRoPE positions are computed
        from the concrete prompt (``multimodal.get_rope_index``; ``mm_token_type_ids`` default from the token ids).

        ``cache`` (``init_cache``): the tokens take the next cache slots and, by default, continue each row's count
        of real tokens as positions (left padding = ``attention_mask`` 0, in the first piece only); a single token
        per row is a decode step. The output then carries the updated cache.
        """
        check_token_ids(input_ids, self.config.vocab_size)
        embeds = self.embed(input_ids)
        if pixel_values is not None or pixel_values_videos is not None:
            if self.visual is None:
                raise ValueError("pixel values were given but this model has no vision tower (config.vision is None)")
            embeds = fuse_vision(self.visual, self.config, input_ids, embeds, pixel_values=pixel_values,
                                 image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                                 video_grid_thw=video_grid_thw)
            if positions is None:
                positions = multimodal_positions(self.config, input_ids, mm_token_type_ids, image_grid_thw,
                                                 video_grid_thw, attention_mask)
        start = None if cache is None else cache.positions
        inputs = self.layer_inputs(input_ids, segment_ids, positions, attention_mask, start=start)
        x, stats, layers = self.decoder(embeds, inputs, None if cache is None else cache.layers)
        if cache is not None:
            cache = HybridCache(layers=layers, positions=next_positions(start, positions, inputs.token_mask))
        hidden = self.norm(x)
        aux = jnp.zeros((), jnp.float32) if stats is None else load_balancing_loss(stats)
        logits = self.unembed(hidden) if compute_logits else None
        return CausalLMOutput(logits=logits, hidden_states=hidden, aux_loss=aux, router_stats=stats, cache=cache)


def next_positions(start: jax.Array, positions: jax.Array | None, token_mask: jax.Array) -> jax.Array:
    """A cache's next rope position per row: ``start`` plus the real tokens written, or one past the largest
    given position (text ``[B, T]`` or multimodal ``[3, B, T]``)."""
    if positions is None:
        return start + jnp.sum(token_mask, axis=1, dtype=jnp.int32)
    largest = jnp.max(positions, axis=-1)
    return (largest if largest.ndim == 1 else jnp.max(largest, axis=0)).astype(jnp.int32) + 1
