"""Image-caption data: emoji rendering, row layout (loss on the caption only), batch shapes, held-out split,
resumable shuffling, config errors, and caption ranking on hand-made cases with a known answer."""

import os

import numpy as np
import pytest

from qwen35_jax.data.captions import (
    DIGIT_WORDS,
    EMOJI_FONT,
    CaptionDataConfig,
    RankingSet,
    caption_priors,
    heldout_split,
    load_digits,
    prepare_caption_data,
    rank_metrics,
    render_emoji,
    score_candidates,
    shrink_and_shift,
)
from qwen35_jax.data.tokenizer import get_tokenizer
from qwen35_jax.model.multimodal import get_rope_index
from qwen35_jax.train.caption_ranking import caption_log_likelihood

SIZE = 64  # -> grid (1, 4, 4) -> 4 merged image tokens
BATCH = 6


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory) -> str:
    """A small file in scikit-learn's digits.csv layout: 64 pixel values (0..16) + label; 5 images per digit,
    each digit a distinct constant-ish pattern."""
    rng = np.random.default_rng(0)
    rows = []
    for label in range(10):
        for _ in range(5):
            pixels = np.clip(label + rng.integers(-1, 2, size=64), 0, 16)
            rows.append(np.concatenate([pixels, [label]]))
    path = tmp_path_factory.mktemp("digits") / "digits.csv"
    np.savetxt(path, np.asarray(rows), fmt="%d", delimiter=",")
    return str(path)


@pytest.fixture(scope="module")
def data(digits_csv, tmp_path_factory):
    config = {"kind": "captions", "sources": "digits", "digits_csv": digits_csv, "image_size": SIZE, "seq_len": 12,
              "batch_size": BATCH, "heldout_fraction": 0.4, "num_candidates": 4}
    return prepare_caption_data(config, str(tmp_path_factory.mktemp("work")))


def test_digits_loaded_as_rgb_with_word_captions(digits_csv):
    digits = load_digits(SIZE, digits_csv)
    assert digits.images.shape == (50, SIZE, SIZE, 3) and digits.images.dtype == np.uint8
    assert digits.captions[0] == "digit zero" and digits.captions[-1] == "digit nine"
    # value 0 is white paper, larger values darker ink; nearest upscaling keeps 8x8 blocks
    assert digits.images[0].max() == 255 and digits.images[-1].mean() < digits.images[0].mean()
    np.testing.assert_array_equal(digits.images[0, :8, :8], digits.images[0, :1, :1].repeat(8, 0).repeat(8, 1))


@pytest.mark.skipif(not os.path.exists(EMOJI_FONT), reason=f"emoji font missing at {EMOJI_FONT}: "
                    "apt-get install -y fonts-noto-color-emoji")
def test_render_emoji_named_glyphs_only():
    # grinning face, cat face, a letter (skipped), an unassigned code point (skipped), pile of poo
    out = render_emoji(SIZE, codepoints=[0x1F600, 0x1F431, ord("A"), 0x0378, 0x1F4A9])
    assert out.captions == ("grinning face", "cat face", "pile of poo")
    assert out.images.shape == (3, SIZE, SIZE, 3) and out.images.dtype == np.uint8
    assert (out.images[:, 0, 0] == 255).all()  # white background in the corners
    colourful = np.abs(out.images.astype(int) - out.images.mean(-1, keepdims=True)).mean(axis=(1, 2, 3))
    assert (colourful > 5).all()  # colour glyphs, not grey tofu
    assert not np.array_equal(out.images[0], out.images[1])


def test_missing_font_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-noto-color-emoji"):
        render_emoji(SIZE, font_path=str(tmp_path / "none.ttf"))


@pytest.mark.parametrize("field, value, match", [
    ("image_size", 48, "image_size=48.*multiple of 32"),
    ("sources", "emoji,faces", "sources"),
    ("seq_len", 6, "seq_len=6"),
    ("heldout_fraction", 1.0, "heldout_fraction"),
])
def test_bad_config_is_rejected_up_front(field, value, match):
    with pytest.raises(ValueError, match=match):
        CaptionDataConfig.from_mapping({field: value})


def test_unknown_config_field():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['corpora'\]"):
        CaptionDataConfig.from_mapping({"kind": "captions", "corpora": "shakespeare"})


def test_caption_too_long_for_seq_len(digits_csv, tmp_path):
    config = {"sources": "digits", "digits_csv": digits_csv, "seq_len": 8}  # 2 + 4 + 1 eos leaves 1 caption token
    with pytest.raises(ValueError, match="seq_len=8 is too short.*seq_len >= 9"):
        prepare_caption_data(config, str(tmp_path))


def test_batch_shapes_and_dtypes(data):
    batch = next(data.train)
    t = 12
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (BATCH, t), "targets": (BATCH, t), "segment_ids": (BATCH, t), "loss_mask": (BATCH, t),
        "positions": (3, BATCH, t), "pixel_values": (BATCH * 16, 1536), "image_grid_thw": (BATCH, 3)}
    assert batch["input_ids"].dtype == np.int32 and batch["loss_mask"].dtype == bool
    assert batch["pixel_values"].dtype == np.float32
    assert (batch["image_grid_thw"] == [1, 4, 4]).all()
    for batches in data.validation.values():
        assert all(b["input_ids"].shape == (BATCH, t) and b["pixel_values"].shape == (BATCH * 16, 1536)
                   for b in batches)


def test_rows_loss_on_caption_only_and_image_token_counts(data):
    tokenizer = get_tokenizer()
    ids = data.special_ids
    batch = next(data.train)
    assert data.vocab.size == data.model_overrides()["vocab_size"]
    # every special id the model config needs is a compact id below vocab_size
    assert all(0 < v < data.vocab.size for v in ids.values())
    real = data.vocab.to_real(np.asarray(list(ids.values())))
    assert set(real.tolist()) == {tokenizer.special_id(s) for s in (
        "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<|endoftext|>")}
    image = batch["input_ids"] == ids["image_token_id"]
    np.testing.assert_array_equal(image.sum(1), 4)  # (1·4·4) / 2² merged tokens per image
    assert image.sum() * 4 == batch["pixel_values"].shape[0]
    for row in range(BATCH):
        seq = batch["input_ids"][row]
        assert seq[0] == ids["vision_start_token_id"] and seq[5] == ids["vision_end_token_id"]
        np.testing.assert_array_equal(batch["targets"][row, :-1], seq[1:])
        mask = batch["loss_mask"][row]
        targets = batch["targets"][row][mask]
        # the masked targets are exactly the caption followed by <|endoftext|>, nothing from the prompt
        text = data.vocab.decode(targets[:-1].tolist(), tokenizer.decode)
        assert text.startswith("digit ") and text.split()[1] in DIGIT_WORDS
        assert targets[-1] == ids["eos_token_id"]
        assert not np.isin(targets[:-1], list(ids.values())).any()
        assert mask[:5].sum() == 0 and mask[5]  # the first caption token is predicted from <|vision_end|>
        n = int(batch["segment_ids"][row].sum())
        assert mask.sum() == n - 6 and (batch["segment_ids"][row, n:] == 0).all()


def test_positions_are_mrope_of_the_layout(data):
    batch = next(data.train)
    types = (batch["input_ids"] == data.special_ids["image_token_id"]).astype(int)
    expected, _ = get_rope_index(batch["input_ids"], types, batch["image_grid_thw"],
                                 attention_mask=batch["segment_ids"] > 0)
    np.testing.assert_array_equal(batch["positions"], expected)
    # image tokens: t = 1, (h, w) over the 2x2 merged grid; the text after the image resumes at 1 + 2 = 3
    np.testing.assert_array_equal(batch["positions"][:, 0, 1:5], [[1, 1, 1, 1], [1, 1, 2, 2], [1, 2, 1, 2]])
    assert (batch["positions"][:, 0, 5] == 3).all()


def test_heldout_split_disjoint_and_seeded():
    train, held = heldout_split(100, 0.1, seed=3, source_index=0)
    assert len(held) == 10 and len(train) == 90
    assert not set(train) & set(held) and set(train) | set(held) == set(range(100))
    np.testing.assert_array_equal(held, heldout_split(100, 0.1, seed=3, source_index=0)[1])
    assert not np.array_equal(held, heldout_split(100, 0.1, seed=4, source_index=0)[1])


def test_heldout_images_not_in_training(data):
    train_images = {img.tobytes() for img in data.train._pairs.images}
    ranking = data.ranking["digits"]
    assert len(ranking.images) == 20  # 40 % of 50
    assert not any(img.tobytes() in train_images for img in ranking.images)


def test_train_iterator_resumes_from_state(data):
    next(data.train)
    state = data.train.get_state()
    expected = [next(data.train)["input_ids"] for _ in range(12)]  # crosses epoch boundaries (30 pairs / 6)
    data.train.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(data.train)["input_ids"], want)


def test_augmented_batches_resume_and_stay_on_white(digits_csv, tmp_path):
    config = {"sources": "digits", "digits_csv": digits_csv, "image_size": SIZE, "seq_len": 12,
              "batch_size": BATCH, "heldout_fraction": 0.4, "num_candidates": 4}
    plain = prepare_caption_data(config, str(tmp_path / "plain")).train
    augmented = prepare_caption_data(dict(config, augment=True), str(tmp_path / "aug")).train
    first_plain, first_aug = next(plain), next(augmented)
    np.testing.assert_array_equal(first_aug["input_ids"], first_plain["input_ids"])  # same rows, same order
    assert not np.array_equal(first_aug["pixel_values"], first_plain["pixel_values"])
    state = augmented.get_state()
    expected = [next(augmented)["pixel_values"] for _ in range(8)]  # crosses an epoch boundary
    augmented.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(augmented)["pixel_values"], want)


def test_shrink_and_shift_pastes_on_white():
    images = np.zeros((6, 32, 32, 3), np.uint8)  # all ink
    out = shrink_and_shift(images, np.random.default_rng(0), min_scale=0.5)
    for image in out:
        ink = np.argwhere(image.min(axis=-1) < 128)
        side = ink.max(axis=0) - ink.min(axis=0) + 1
        assert 16 <= side[0] == side[1] <= 32 and len(ink) == side[0] * side[1]  # one square, the rest white
        assert (image.min(axis=-1) >= 128).sum() == 32 * 32 - len(ink)


def test_ranking_candidates(data, digits_csv):
    digits = load_digits(SIZE, digits_csv)
    caption_of = {img.tobytes(): cap for img, cap in zip(digits.images, digits.captions, strict=True)}
    ranking = data.ranking["digits"]
    n, c = ranking.candidates.shape
    assert c == 4 and n == len(ranking.images)
    for i in range(n):
        row = ranking.candidates[i]
        assert len(set(row.tolist())) == c  # distinct captions
        assert ranking.texts[row[ranking.true_index[i]]] == caption_of[ranking.images[i].tobytes()]
    assert len(set(ranking.true_index.tolist())) > 1  # the true caption is not always in the same column


def test_rank_metrics_hand_made():
    scores = np.array([[0.0, 5.0, 1.0],    # true column 1 is best: rank 1
                       [3.0, 2.0, 1.0],    # true column 2 is worst: rank 3
                       [2.0, 2.0, 0.0]])   # tie with the true column 0 counts against it: rank 2
    out = rank_metrics(scores, np.array([1, 2, 0]))
    assert out["top1"] == pytest.approx(1 / 3) and out["mean_rank"] == pytest.approx(2.0)
    assert out["chance_top1"] == pytest.approx(1 / 3) and out["chance_mean_rank"] == 2.0
    with pytest.raises(ValueError, match="true_index"):
        rank_metrics(scores, np.array([0, 1]))


def _grey_ranking(data, reverse: bool):
    """Images of uniform grey level g_i; caption i is the i-th distinct held-out caption. A fake model scores a row
    by how close its image's grey level is to its caption's index: the true caption wins (or loses, reversed)."""
    ranking = data.ranking["digits"]
    k = len(ranking.texts)
    images = np.stack([np.full((SIZE, SIZE, 3), 20 * i, np.uint8) for i in range(k)])
    candidates = np.stack([np.roll(np.arange(k), -i) for i in range(k)])  # true caption i sits in column 0
    hand = RankingSet(images, ranking.captions, ranking.texts, candidates, np.zeros(k, np.int64))
    caption_index = {tuple(c.tolist()): j for j, c in enumerate(ranking.captions)}

    def log_likelihood(batch):
        grey = batch["pixel_values"].reshape(BATCH, -1).mean(1)  # normalised: (g / 255 - 0.5) / 0.5
        level = np.round(((grey * 0.5 + 0.5) * 255) / 20)
        out = []
        for row in range(BATCH):
            caption = tuple(batch["targets"][row][batch["loss_mask"][row]][:-1].tolist())
            distance = abs(level[row] - caption_index[caption])
            out.append(distance if reverse else -distance)
        return np.asarray(out)

    return hand, log_likelihood


@pytest.mark.parametrize("reverse", [False, True])
def test_score_candidates_known_answer(data, reverse):
    hand, log_likelihood = _grey_ranking(data, reverse)
    k = len(hand.texts)
    assert k * k % BATCH  # the last scoring batch is filled up with repeats
    scores = score_candidates(hand, data.layout, BATCH, log_likelihood)
    assert scores.shape == (k, k)
    out = rank_metrics(scores, hand.true_index)
    if not reverse:
        assert out["top1"] == 1.0 and out["mean_rank"] == 1.0
    else:  # the true caption is the nearest (distance 0): reversed it is always ranked last
        assert out["top1"] == 0.0 and out["mean_rank"] == k


def test_priors_remove_an_image_independent_bias(data):
    """A fake model with a strong preference for caption 0 whatever the image: raw likelihood ranks caption 0
    first for every image, subtracting the blank-image prior recovers the true captions."""
    hand, grey_log_likelihood = _grey_ranking(data, reverse=False)
    k = len(hand.texts)

    def biased(batch):
        grey = batch["pixel_values"].reshape(BATCH, -1).mean(1)
        image_term = np.where(grey > 0.99, 0.0, grey_log_likelihood(batch))  # a white image carries no evidence
        favourite = tuple(hand.captions[0].tolist())
        is_favourite = [tuple(batch["targets"][r][batch["loss_mask"][r]][:-1].tolist()) == favourite
                        for r in range(BATCH)]
        return image_term + 100.0 * np.asarray(is_favourite)

    scores = score_candidates(hand, data.layout, BATCH, biased)
    assert rank_metrics(scores, hand.true_index)["top1"] == pytest.approx(1 / k)  # only image 0 is right
    priors = caption_priors(hand, data.layout, BATCH, biased)
    assert priors.shape == (k,) and priors[0] == 100.0 and not priors[1:].any()
    assert rank_metrics(scores - priors[hand.candidates], hand.true_index)["top1"] == 1.0


def test_caption_log_likelihood_matches_log_softmax():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 4))
    mask = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], bool)
    got = np.asarray(caption_log_likelihood(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, (picked * mask).sum(1), rtol=1e-5)
