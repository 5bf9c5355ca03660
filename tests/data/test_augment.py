"""Augmentation: crops are translations of the zero-padded image, flips are exact mirrors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gapjax.data import crop_and_flip, random_crop, random_crop_flip, random_flip

N, H, W, C = 256, 6, 5, 2


@pytest.fixture(scope="module")
def x():
    """Distinct, non-zero values: every crop position and flip gives a different window."""
    return (np.arange(N * H * W * C, dtype=np.int32) + 1).reshape(N, H, W, C)


def ref_crop(x, oy, ox, flip, pad, crop):
    padded = np.pad(x, ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    out = padded[oy : oy + crop[0], ox : ox + crop[1]]
    return out[:, ::-1] if flip else out


def find_window(x_i, y_i, pad, crop):
    """Every (row offset, column offset, flip) whose crop of the padded x_i equals y_i."""
    hits = []
    for oy, ox, flip in itertools.product(
        range(x_i.shape[0] + 2 * pad[0] - crop[0] + 1),
        range(x_i.shape[1] + 2 * pad[1] - crop[1] + 1),
        (False, True),
    ):
        if np.array_equal(ref_crop(x_i, oy, ox, flip, pad, crop), y_i):
            hits.append((oy, ox, flip))
    return hits


@pytest.mark.parametrize(
    "padding, crop_size",
    [(2, None), ((1, 3), (4, 7)), (0, 3)],
    ids=["pad2", "uneven", "no-pad-smaller-crop"],
)
def test_crop_and_flip_matches_numpy(x, padding, crop_size):
    rng = np.random.default_rng(0)
    pad = (padding, padding) if isinstance(padding, int) else padding
    crop = (
        (H, W)
        if crop_size is None
        else (crop_size,) * 2
        if isinstance(crop_size, int)
        else crop_size
    )
    sub = x[:16]
    oy = rng.integers(0, H + 2 * pad[0] - crop[0] + 1, 16)
    ox = rng.integers(0, W + 2 * pad[1] - crop[1] + 1, 16)
    flips = rng.random(16) < 0.5
    got = crop_and_flip(sub, np.stack([oy, ox], 1), flips, padding=padding, crop_size=crop_size)
    ref = np.stack([ref_crop(sub[i], oy[i], ox[i], flips[i], pad, crop) for i in range(16)])
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, ref)


def test_random_crop_flip_is_a_random_translation_and_mirror(x):
    y = np.asarray(random_crop_flip(x, key=jax.random.key(0), padding=2))
    assert y.shape == x.shape and y.dtype == x.dtype
    offsets, flips = [], []
    for i in range(N):
        (hit,) = find_window(x[i], y[i], (2, 2), (H, W))  # exactly one window matches
        offsets.append(hit[:2])
        flips.append(hit[2])
    offsets = np.array(offsets)
    # Every row offset 0..4 and column offset 0..4 occurs, independently per example.
    assert set(offsets[:, 0]) == set(range(5)) and set(offsets[:, 1]) == set(range(5))
    assert len({tuple(o) for o in offsets}) > 20
    # Flips with probability 0.5 (binomial(256, 0.5): mean 128, sd 8; bounds at 5 sd).
    assert 88 <= sum(flips) <= 168


def test_keys(x):
    a = random_crop_flip(x, key=jax.random.key(1), padding=2)
    b = random_crop_flip(x, key=jax.random.key(1), padding=2)
    c = random_crop_flip(x, key=jax.random.key(2), padding=2)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.any(np.asarray(a) != np.asarray(c), axis=(1, 2, 3))) > 0.5
    # One compilation serves every key.
    size = random_crop_flip._cache_size()
    for seed in range(3, 6):
        random_crop_flip(x, key=jax.random.key(seed), padding=2)
    assert random_crop_flip._cache_size() == size


def test_random_crop_never_flips(x):
    y = np.asarray(random_crop(x[:32], key=jax.random.key(0), padding=2))
    for i in range(32):
        assert any(not flip for _, _, flip in find_window(x[i], y[i], (2, 2), (H, W)))


def test_flip_is_an_exact_mirror(x):
    np.testing.assert_array_equal(
        random_flip(x, key=jax.random.key(0), flip_prob=1.0), x[:, :, ::-1]
    )
    np.testing.assert_array_equal(random_flip(x, key=jax.random.key(0), flip_prob=0.0), x)
    y = np.asarray(random_flip(x, key=jax.random.key(0)))
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(mirrored | np.all(y == x, axis=(1, 2, 3)))
    assert 88 <= mirrored.sum() <= 168


def test_cifar_shapes_and_uint8():
    imgs = jnp.full((4, 32, 32, 3), 200, jnp.uint8)
    y = random_crop_flip(imgs, key=jax.random.key(0))
    assert y.shape == (4, 32, 32, 3) and y.dtype == jnp.uint8
    # The padding is zero: with padding 4 every crop keeps at least 28 of 32 rows of the image.
    rows = np.asarray(jnp.any(y != 0, axis=(2, 3))).sum(1)
    assert np.all((rows >= 28) & (rows <= 32))


def test_errors():
    with pytest.raises((ValueError, TypeError), match="images"):
        random_crop_flip(jnp.zeros((32, 32, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"crop_size \(41, 41\) does not fit .* \(40, 40\)"):
        random_crop_flip(jnp.zeros((1, 32, 32, 3)), key=jax.random.key(0), crop_size=41)
    with pytest.raises(ValueError, match="padding=-1"):
        random_crop(jnp.zeros((1, 8, 8, 1)), key=jax.random.key(0), padding=-1)
    with pytest.raises((ValueError, TypeError), match=r"offsets"):
        crop_and_flip(jnp.zeros((1, 4, 4, 1)), jnp.zeros((2, 2), int), jnp.zeros(1, bool))
