"""Batched autoregressive generation with the hybrid cache: prefill once, then a jit-compiled decode loop.

    generator = Generator(model, SamplingConfig(temperature=0.7, top_p=0.9), stop_tokens=(248044,))
    result = generator([[1, 2, 3], [4, 5]], max_new_tokens=32, seed=0)
    result.tokens        # list of generated id lists (cut after the first stop token, which is kept)
    result.decode_tokens_per_s, result.compile_s

Prompts of different lengths are left-padded into one ``[B, T]`` batch with a 0/1 mask. Like transformers'
``generate``, each row's rope positions count its real tokens only (``cumsum(mask) - 1``); padding is masked out of
attention and starts its own GDN segment. Prefill and decode are the model's own forward with its cache
(``Qwen35ForCausalLM.init_cache``); the decode loop is one ``lax.while_loop`` under ``jax.jit`` (stops early when
every row has hit a stop token).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.infer.sampling import SamplingConfig, sample
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.model.cache import HybridCache
from qwen35_jax.model.qwen35 import check_token_ids


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [B, T] int32, mask [B, T] int32)`` with each prompt right-aligned, ``T`` a multiple of ``multiple``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists")
    width = -(-max(len(p) for p in prompts) // multiple) * multiple
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def forward_with_cache(model: Qwen35ForCausalLM, input_ids: jax.Array, cache: HybridCache,
                       attention_mask: jax.Array | None = None) -> tuple[jax.Array, HybridCache]:
    """Logits of the last position ``[B, V]`` and the updated cache: the model's forward with ``cache``.

    With ``attention_mask`` (prefill, ``input_ids [B, T]`` written at the next ``T`` cache slots) the rope positions
    continue each row's count of real tokens; a prompt may be prefilled in several pieces, padding (if any) in the
    first. Without it (decode, ``[B, 1]``) the token takes the next slot and position of each row.
    """
    out = model(input_ids, attention_mask=attention_mask, cache=cache, compute_logits=False)
    return model.unembed(out.hidden_states[:, -1:])[:, 0], out.cache


@dataclasses.dataclass
class GenerationResult:
    tokens: list[list[int]]  # per prompt, up to and including its first stop token
    prefill_s: float  # prefill + first token, after compilation
    decode_s: float  # the decode loop, after compilation
    compile_s: float  # compilation of prefill and decode (0 when cached)
    decode_steps: int  # tokens per row produced by the decode loop (max_new_tokens - 1 unless all stopped)

    @property
    def decode_tokens_per_s(self) -> float:
        return len(self.tokens) * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


class Generator:
    """Jit-compiled prefill + decode loop for one model, sampling rule and stop-token set (compiled per shape)."""

    def __init__(self, model: Qwen35ForCausalLM, sampling: SamplingConfig | None = None, *,
                 stop_tokens: Sequence[int] = (), pad_id: int = 0, banned_tokens: Sequence[int] = ()):
        """``banned_tokens``: ids never generated (their logits are -inf before sampling), e.g. the ``<unk>`` of a
        compact vocabulary, which stands for no text."""
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        self.sampling = sampling or SamplingConfig()
        self.stop_tokens = tuple(int(t) for t in stop_tokens)  # default for __call__
        self.pad_id = pad_id
        self.banned = np.asarray(sorted({int(t) for t in banned_tokens}), np.int32)
        self.prompt_multiple = model.prompt_multiple  # a sequence-split model prefills whole GDN chunks per device
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("max_length",))
        self._decode = jax.jit(self._decode_impl, static_argnames=("steps",))
        self._compiled: set[tuple] = set()

    def _prefill_impl(self, state: nnx.State, ids: jax.Array, mask: jax.Array, key: jax.Array, *,
                      max_length: int) -> tuple[jax.Array, HybridCache]:
        model = nnx.merge(self.graphdef, state)
        cache = model.init_cache(ids.shape[0], max_length)
        logits, cache = forward_with_cache(model, ids, cache, attention_mask=mask)
        return sample(self._allowed(logits), key, self.sampling), cache

    def _allowed(self, logits: jax.Array) -> jax.Array:
        return logits.at[:, self.banned].set(-jnp.inf) if self.banned.size else logits

    def _decode_impl(self, state: nnx.State, cache: HybridCache, first: jax.Array, key: jax.Array,
                     stops: jax.Array, *, steps: int) -> tuple[jax.Array, jax.Array]:
        """``steps`` more tokens after ``first``; returns (tokens [B, steps], number of steps taken)."""
        model = nnx.merge(self.graphdef, state)
        batch = first.shape[0]

        def cond(carry: tuple) -> jax.Array:
            step, _, _, done, _, _ = carry
            return (step < steps) & ~jnp.all(done)

        def body(carry: tuple) -> tuple:
            step, cache, token, done, out, key = carry
            key, sub = jax.random.split(key)
            logits, cache = forward_with_cache(model, token[:, None], cache)
            token = jnp.where(done, self.pad_id, sample(self._allowed(logits), sub, self.sampling))
            out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, axis=1)
            return step + 1, cache, token, done | jnp.isin(token, stops), out, key

        out = jnp.full((batch, steps), self.pad_id, jnp.int32)
        carry = (jnp.zeros((), jnp.int32), cache, first, jnp.isin(first, stops), out, key)
        step, _, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
        return out, step

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seed: int = 0,
                 key: jax.Array | None = None, stop_tokens: Sequence[int] | None = None) -> GenerationResult:
        """Generate up to ``max_new_tokens`` per prompt; a row ends after its first token in ``stop_tokens``
        (default: the constructor's). ``seed`` / ``key`` drive sampling (unused when greedy)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
        stops = tuple(int(t) for t in (self.stop_tokens if stop_tokens is None else stop_tokens))
        # A fixed-size (multiple of 8, -1 padded) traced array: other stop sets reuse the compiled loop.
        stop_array = np.full(max(8, -(-len(stops) // 8) * 8), -1, np.int32)
        stop_array[: len(stops)] = stops
        ids, mask = left_pad(prompts, self.pad_id, self.prompt_multiple)
        check_token_ids(ids, self.config.vocab_size)
        key = jax.random.key(seed) if key is None else key
        prefill_key, decode_key = jax.random.split(key)
        max_length = ids.shape[1] + max_new_tokens
        signature = (ids.shape, max_new_tokens, stop_array.shape)
        compile_s = 0.0
        if signature not in self._compiled:  # compile (and run once) outside the timed region
            start = time.perf_counter()
            first, cache = self._prefill(self.state, ids, mask, prefill_key, max_length=max_length)
            jax.block_until_ready(self._decode(self.state, cache, first, decode_key, stop_array,
                                               steps=max_new_tokens - 1))
            compile_s = time.perf_counter() - start
            self._compiled.add(signature)
        start = time.perf_counter()
        first, cache = jax.block_until_ready(self._prefill(self.state, ids, mask, prefill_key, max_length=max_length))
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        out, steps = jax.block_until_ready(self._decode(self.state, cache, first, decode_key, stop_array,
                                                        steps=max_new_tokens - 1))
        decode_s = time.perf_counter() - start
        tokens = np.concatenate([np.asarray(first)[:, None], np.asarray(out)[:, : int(steps)]], axis=1)
        return GenerationResult(tokens=[_cut(row, stops) for row in tokens.tolist()], prefill_s=prefill_s,
                                decode_s=decode_s, compile_s=compile_s, decode_steps=int(steps))


def _cut(row: list[int], stops: Sequence[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stops:
            return row[: i + 1]
    return row


def greedy_without_cache(model: Qwen35ForCausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         pad_id: int = 0) -> list[list[int]]:
    """Greedy decoding by a full forward over the whole sequence for every new token (the no-cache reference).

    One fixed ``[B, T + N]`` buffer: not-yet-generated slots are masked (segment 0), which causal attention and
    the causal GDN never read from the real tokens' side.
    """
    ids, mask = left_pad(prompts, pad_id)
    batch, length = ids.shape
    ids = np.concatenate([ids, np.full((batch, max_new_tokens), pad_id, np.int32)], axis=1)
    mask = np.concatenate([mask, np.zeros((batch, max_new_tokens), np.int32)], axis=1)
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state: nnx.State, ids: jax.Array, mask: jax.Array, at: jax.Array) -> jax.Array:
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        logits = nnx.merge(graphdef, state)(ids, attention_mask=mask, positions=positions).logits
        return jnp.argmax(jax.lax.dynamic_index_in_dim(logits, at, axis=1, keepdims=False), axis=-1)

    for step in range(max_new_tokens):
        at = length + step
        token = np.asarray(next_token(state, ids, mask, jnp.int32(at - 1)))
        ids[:, at], mask[:, at] = token, 1
    return ids[:, length:].tolist()
