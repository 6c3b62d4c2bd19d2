"""Generation with the hybrid cache equals transformers' ``generate`` and a no-cache recompute; sampling rules."""

import json
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.hf import load_pretrained
from qwen35_jax.infer import Generator, SamplingConfig, filter_logits, greedy_without_cache, sample

REPO = pathlib.Path(__file__).resolve().parents[2]
CASES = ["dense_untied", "moe"]  # dense (2 hybrid blocks) and MoE (per-expert checkpoint), both fp32
PROMPTS = [[17, 3, 99, 250, 4, 61, 8, 140, 27, 201, 9], [77, 5, 180, 33, 2]]  # different lengths: left padding
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def reference_tokens(hf_fixtures, tmp_path_factory) -> dict[str, list[list[int]]]:
    """transformers' greedy ``generate`` (KV + GDN cache, left-padded batch) in the reference interpreter."""
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        pytest.fail("HF_REF_PYTHON is unset: point it at the reference interpreter (.venv-ref/bin/python)")
    root = tmp_path_factory.mktemp("generate")
    (root / "prompts.json").write_text(json.dumps(PROMPTS))
    outs = [root / f"{case}.json" for case in CASES]
    subprocess.run([ref_python, "-m", "tools.hf_reference.generation_reference", "generate",
                    "--model_dir", *[str(hf_fixtures / c) for c in CASES], "--prompts", str(root / "prompts.json"),
                    "--max_new_tokens", str(NEW_TOKENS), "--out", *map(str, outs)], check=True, cwd=REPO, timeout=600)
    return {case: json.loads(out.read_text())["tokens"] for case, out in zip(CASES, outs, strict=True)}


@pytest.fixture(scope="module")
def models(hf_fixtures):
    return {case: load_pretrained(hf_fixtures / case) for case in CASES}


@pytest.fixture(scope="module")
def dense_generator(models):
    return Generator(models["dense_untied"])


@pytest.mark.parametrize("case", CASES)
def test_greedy_equals_transformers_generate(models, reference_tokens, dense_generator, case):
    generator = dense_generator if case == "dense_untied" else Generator(models[case])
    result = generator(PROMPTS, NEW_TOKENS)
    print(f"{case}: compile {result.compile_s:.1f}s, decode {result.decode_tokens_per_s:.0f} tokens/s")
    assert result.tokens == reference_tokens[case]
    assert len(set(map(tuple, result.tokens))) == 2 and len(set(result.tokens[0])) > 4  # not a degenerate loop


def test_greedy_equals_no_cache_recompute(models, reference_tokens, dense_generator):
    tokens = greedy_without_cache(models["dense_untied"], PROMPTS, NEW_TOKENS)
    assert tokens == dense_generator(PROMPTS, NEW_TOKENS).tokens


def test_stop_tokens_end_rows(dense_generator):
    full = dense_generator(PROMPTS, NEW_TOKENS).tokens
    stop = full[0][5]
    first = full[0].index(stop)
    result = dense_generator(PROMPTS, NEW_TOKENS, stop_tokens=[stop])
    assert result.tokens[0] == full[0][: first + 1]
    row1 = full[1][: full[1].index(stop) + 1] if stop in full[1] else full[1]
    assert result.tokens[1] == row1


def test_sampling_is_deterministic_given_a_key(models):
    generator = Generator(models["dense_untied"], SamplingConfig(temperature=1.0, top_k=20, top_p=0.9))
    a, b = generator(PROMPTS, 12, seed=1).tokens, generator(PROMPTS, 12, seed=1).tokens
    c = generator(PROMPTS, 12, seed=2).tokens
    assert a == b and a != c


def test_top_k_1_equals_greedy_and_filters():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    keys = jax.random.split(jax.random.key(1), 3)
    greedy = np.asarray(jnp.argmax(logits, -1))
    for key in keys:  # the sampling path (not the argmax shortcut) with only the top token left
        filtered = filter_logits(logits, SamplingConfig(temperature=0.7, top_k=1))
        np.testing.assert_array_equal(np.asarray(jax.random.categorical(key, filtered)), greedy)
        np.testing.assert_array_equal(np.asarray(sample(logits, key, SamplingConfig(temperature=0.7, top_k=1))),
                                      greedy)
    top5 = np.asarray(filter_logits(logits, SamplingConfig(temperature=1.0, top_k=5)))
    assert (np.isfinite(top5).sum(-1) == 5).all()
    probs = np.asarray(jax.nn.softmax(logits / 1.0, -1))
    kept = np.isfinite(np.asarray(filter_logits(logits, SamplingConfig(temperature=1.0, top_p=0.6))))
    for row in range(4):  # nucleus = the smallest top set whose mass reaches 0.6
        order = np.argsort(-probs[row])
        need = int(np.searchsorted(np.cumsum(probs[row][order]), 0.6) + 1)
        assert set(np.flatnonzero(kept[row])) == set(order[:need].tolist())
    draws = np.asarray(jax.vmap(lambda k: sample(logits, k, SamplingConfig(temperature=1.0, top_p=0.6)))(
        jax.random.split(jax.random.key(2), 200)))
    assert all(kept[row][draws[:, row]].all() for row in range(4))
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_left_padded_prefill_matches_the_padded_fixture(hf_fixtures):
    """Prefill logits of a left-padded batch equal transformers' (``dense_padded``: row 1 has 9 pad tokens)."""
    from qwen35_jax.infer import forward_with_cache

    reference = np.load(hf_fixtures / "dense_padded" / "reference.npz")
    model = load_pretrained(hf_fixtures / "dense_padded")
    ids, mask = reference["input_ids"], reference["attention_mask"]
    cache = model.init_cache(ids.shape[0], ids.shape[1] + 4)
    logits, cache = nnx.jit(forward_with_cache)(model, jnp.asarray(ids), cache, jnp.asarray(mask))
    err = np.abs(np.asarray(logits) - reference["logits"][:, -1]).max()
    assert err <= 1e-4, err
    assert np.asarray(cache.valid)[:, : ids.shape[1]].tolist() == mask.astype(bool).tolist()
    assert np.asarray(cache.positions).tolist() == mask.sum(1).tolist()


def test_prefill_in_pieces_continues_the_cache(hf_fixtures, models):
    """Prefilling 35 + 35 tokens equals transformers' logits at both ends (GDN state, conv window, KV carried);
    equal pieces share one compilation."""
    from qwen35_jax.infer import forward_with_cache

    reference = np.load(hf_fixtures / "dense_untied" / "reference.npz")
    model, ids = models["dense_untied"], jnp.asarray(reference["input_ids"])
    step = nnx.jit(forward_with_cache)
    cache = model.init_cache(ids.shape[0], ids.shape[1])
    first, cache = step(model, ids[:, :35], cache, jnp.ones((2, 35), jnp.int32))
    second, cache = step(model, ids[:, 35:], cache, jnp.ones((2, 35), jnp.int32))
    for got, at in ((first, 34), (second, 69)):
        err = np.abs(np.asarray(got) - reference["logits"][:, at]).max()
        assert err <= 1e-4, (at, err)
    assert int(cache.index) == 70 and np.asarray(cache.positions).tolist() == [70, 70]


@pytest.mark.parametrize("case", CASES)
def test_decode_steps_match_the_training_forward(hf_fixtures, models, case):
    """The same model call without a cache (training) and with one (prefill 60 tokens, then 10 one-token decode
    steps) gives the same logits; ``compute_logits=False`` returns only the hidden states."""
    model = models[case]
    ids = jnp.asarray(np.load(hf_fixtures / "dense_untied" / "reference.npz")["input_ids"]) % model.config.vocab_size
    full = nnx.jit(lambda m, x: m(x))(model, ids)
    assert full.cache is None

    @nnx.jit
    def step(m, x, cache):
        out = m(x, cache=cache, compute_logits=False)
        return m.unembed(out.hidden_states), out.logits, out.cache

    logits, none, cache = step(model, ids[:, :60], model.init_cache(ids.shape[0], ids.shape[1]))
    assert none is None
    pieces = [logits] + [None] * 10
    for at in range(60, 70):
        pieces[at - 59], _, cache = step(model, ids[:, at: at + 1], cache)
    err = np.abs(np.asarray(jnp.concatenate(pieces, axis=1)) - np.asarray(full.logits)).max()
    assert err <= 1e-4, err
    assert int(cache.index) == 70 and np.asarray(cache.positions).tolist() == [70, 70]


def test_banned_tokens_are_never_generated(models, dense_generator):
    """A compact vocabulary's <unk> is banned in experiments.generate: greedy and sampled rows never contain it."""
    tokens = dense_generator(PROMPTS, 12).tokens
    counts = np.bincount(np.concatenate(tokens))
    favourite = int(np.argmax(counts))
    assert counts[favourite] >= 2  # the unbanned rows use it
    banned = Generator(models["dense_untied"], stop_tokens=(), banned_tokens=[favourite])
    for sampling in (None, SamplingConfig(temperature=1.5)):
        if sampling is not None:
            banned = Generator(models["dense_untied"], sampling, banned_tokens=[favourite])
        rows = banned(PROMPTS, 12, seed=3).tokens
        assert favourite not in np.concatenate(rows) and all(len(r) == 12 for r in rows)
