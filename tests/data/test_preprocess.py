"""GCN, ZCA, LCN and standardization against float64 NumPy references written here."""

import numpy as np
import pytest
import scipy.signal

from gapjax.data import (
    ZCA,
    ChannelStats,
    fit_channel_stats,
    fit_zca,
    global_contrast_normalize,
    local_contrast_normalize,
    standardize,
    zca_whiten,
)


@pytest.fixture(scope="module")
def images():
    """A training and a test set of small uint8 images (n, 4, 4, 3): 48 features."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (300, 4, 4, 3)).astype(np.float64)
    # Correlated pixels, as in real images, so that whitening has something to do.
    smooth = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3
    x = np.clip(smooth, 0, 255).astype(np.uint8)
    x[0] = 77  # a constant image (zero norm after centering)
    return x[:240], x[240:]


# ---- references (float64 NumPy, pylearn2's formulas) ----


def ref_gcn(x, scale=55.0, min_divisor=1e-8):
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x**2).sum(axis=1)) / scale
    norm[norm < min_divisor] = 1.0
    return x / norm[:, None]


def ref_zca(x, bias):
    x = x.reshape(len(x), -1).astype(np.float64)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False, bias=True) + bias * np.eye(x.shape[1])
    lam, v = np.linalg.eigh(cov)
    return mean, v @ np.diag(lam**-0.5) @ v.T


def ref_lcn(x, kernel_size=7, threshold=1e-4):
    """pylearn2's lecun_lcn per channel: 'full' convolution cropped by kernel_size // 2."""
    mid = kernel_size // 2
    r = np.arange(kernel_size) - mid
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 2.0**2))
    g /= g.sum()
    x = x.astype(np.float64)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[3]):
            im = x[i, :, :, c]
            mean = scipy.signal.convolve2d(im, g, mode="full")[mid:-mid, mid:-mid]
            sq = scipy.signal.convolve2d(im**2, g, mode="full")[mid:-mid, mid:-mid]
            denom = np.sqrt(sq)
            divisor = np.maximum(np.maximum(denom.mean(), denom), threshold)
            out[i, :, :, c] = (im - mean) / divisor
    return out


# ---- tests ----


def test_gcn_matches_pylearn2(images):
    train, _ = images
    for scale in (55.0, 1.0):
        got = np.asarray(global_contrast_normalize(train, scale=scale))
        assert got.dtype == np.float32 and got.shape == train.shape
        np.testing.assert_allclose(
            got.reshape(len(train), -1), ref_gcn(train, scale), atol=2e-5 * scale
        )
    got = np.asarray(global_contrast_normalize(train))
    assert np.all(got[0] == 0)  # the constant image: centered, not NaN
    norms = np.sqrt((got[1:].reshape(len(got) - 1, -1) ** 2).sum(1))
    np.testing.assert_allclose(norms, 55.0, rtol=1e-5)


def test_zca_fit_matches_reference_and_is_chunk_independent(images):
    train, test = images
    x = np.asarray(global_contrast_normalize(train), np.float64)
    mean, p = ref_zca(x, bias=0.1)
    for chunk_size in (37, 4096):
        zca = fit_zca(x, bias=0.1, chunk_size=chunk_size)
        np.testing.assert_allclose(zca.mean, mean, atol=1e-5)
        np.testing.assert_allclose(zca.whitening, p, rtol=1e-4, atol=1e-5)
    # The test split is whitened with the training mean and matrix, unchanged.
    t = np.asarray(global_contrast_normalize(test), np.float64)
    got = np.asarray(zca_whiten(t, zca=zca)).reshape(len(t), -1)
    np.testing.assert_allclose(got, (t.reshape(len(t), -1) - mean) @ p, atol=2e-4)
    # On the training split the whitened covariance is C (C + 0.1 I)^-1: near I where lambda >> 0.1.
    w = np.asarray(zca_whiten(x, zca=zca), np.float64).reshape(len(x), -1)
    c = np.cov(x.reshape(len(x), -1), rowvar=False, bias=True)
    expected = c @ np.linalg.inv(c + 0.1 * np.eye(c.shape[0]))
    np.testing.assert_allclose(np.cov(w, rowvar=False, bias=True), expected, atol=1e-3)


def test_zca_accepts_jax_arrays_and_round_trips_through_npz(tmp_path, images):
    train, _ = images
    x = global_contrast_normalize(train)  # a jax array, fetched chunk by chunk
    zca = fit_zca(x, chunk_size=100)
    zca.save(tmp_path / "zca.npz")
    back = ZCA.load(tmp_path / "zca.npz")
    np.testing.assert_array_equal(back.mean, zca.mean)
    np.testing.assert_array_equal(back.whitening, zca.whitening)
    assert [p.name for p in tmp_path.iterdir()] == ["zca.npz"]
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad\.npz: not a ZCA file"):
        ZCA.load(tmp_path / "bad.npz")


def test_zca_errors():
    zca = ZCA(np.zeros(48, np.float32), np.eye(48, dtype=np.float32))
    with pytest.raises(ValueError, match=r"images \(2, 4, 4, 2\) have 32 features"):
        zca_whiten(np.zeros((2, 4, 4, 2)), zca=zca)
    # Wrong rank: ValueError naming the shape (TypeError from jaxtyping's shape check under the
    # test suite's --jaxtyping-packages hook, which sees the annotation first).
    with pytest.raises((ValueError, TypeError), match=r"images"):
        fit_zca(np.zeros((5, 48)))
    with pytest.raises(ValueError, match="singular"):
        fit_zca(np.zeros((5, 2, 2, 1)), bias=0.0)


def test_zca_is_a_pytree_usable_under_jit(images):
    import jax

    train, _ = images
    zca = fit_zca(train.astype(np.float32))
    leaves = jax.tree.leaves(zca)
    assert len(leaves) == 2
    doubled = jax.tree.map(lambda a: a * 2, zca)
    assert isinstance(doubled, ZCA)
    out = jax.jit(lambda x, z: zca_whiten(x, zca=z))(train[:2], zca)
    np.testing.assert_allclose(out, zca_whiten(train[:2], zca=zca), rtol=1e-6)


def test_lcn_matches_pylearn2(images):
    train, _ = images
    x = np.asarray(global_contrast_normalize(train[:6], scale=1.0))  # SVHN: GCN(1) then LCN
    # 4x4 images are smaller than the 7x7 window: exercises the zero padding everywhere.
    np.testing.assert_allclose(local_contrast_normalize(x), ref_lcn(x), rtol=1e-4, atol=1e-5)
    big = np.random.default_rng(1).normal(size=(2, 12, 10, 2))
    np.testing.assert_allclose(
        local_contrast_normalize(big, kernel_size=5), ref_lcn(big, 5), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="kernel_size=4 must be odd"):
        local_contrast_normalize(big, kernel_size=4)


def test_standardize(images):
    train, test = images
    stats = fit_channel_stats(train, chunk_size=50)
    flat = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, flat.std(0), rtol=1e-6)
    got = standardize(test, stats=stats)
    np.testing.assert_allclose(got, (test - flat.mean(0)) / flat.std(0), rtol=1e-5, atol=1e-5)
    constant = fit_channel_stats(np.full((2, 2, 2, 1), 9, np.uint8))
    assert constant.std.tolist() == [1.0]
    with pytest.raises(ValueError, match=r"stats are for \(3,\) channels"):
        standardize(np.zeros((1, 2, 2, 1)), stats=stats)
    assert isinstance(stats, ChannelStats)
