"""Split, and the paper's validation splits (sizes, class balance, determinism)."""

import numpy as np
import pytest

from gapjax.data import (
    Split,
    concatenate_splits,
    holdout_last,
    holdout_per_class,
    svhn_validation_split,
)


def labelled(labels, size=1):
    labels = np.asarray(labels, np.int32)
    # Image i holds the value i % 256 so that examples can be traced through a split.
    images = np.broadcast_to(
        (np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None, None],
        (len(labels), size, size, 1),
    ).copy()
    return Split(images, labels)


def test_split_validates_its_arrays():
    x = np.zeros((2, 3, 3, 1), np.uint8)
    with pytest.raises((ValueError, TypeError), match="labels"):
        Split(x, np.zeros(3, np.int32))
    with pytest.raises((ValueError, TypeError), match="images"):
        Split(x.astype(np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="labels must be non-negative"):
        Split(x, np.array([0, -1], np.int32))
    with pytest.raises(ValueError, match="labels reach 2 but there are 2 class names"):
        Split(x, np.array([0, 2], np.int32), ("a", "b"))


def test_take_and_concatenate():
    s = labelled([0, 1, 2, 1, 0])
    np.testing.assert_array_equal(s.take([4, 0]).labels, [0, 0])
    np.testing.assert_array_equal(s.take(slice(1, 3)).images[:, 0, 0, 0], [1, 2])
    both = concatenate_splits(s, s.take([2]))
    np.testing.assert_array_equal(both.labels, [0, 1, 2, 1, 0, 2])
    with pytest.raises(ValueError, match="image shapes"):
        concatenate_splits(s, labelled([0], size=2))


def test_holdout_last_is_the_last_examples():
    s = labelled(np.arange(50_000) % 10)
    train, valid = holdout_last(s)
    assert (len(train), len(valid)) == (40_000, 10_000)
    np.testing.assert_array_equal(valid.images[:, 0, 0, 0], np.arange(40_000, 50_000) % 256)
    np.testing.assert_array_equal(train.labels, s.labels[:40_000])
    with pytest.raises(ValueError, match="size=5"):
        holdout_last(labelled([0, 1, 2]), size=5)


def tagged(labels):
    """A split whose image i encodes i (two bytes), to follow examples through a split."""
    n = len(labels)
    idx = np.arange(n)
    images = np.stack([idx // 256, idx % 256], -1).astype(np.uint8).reshape(n, 1, 2, 1)
    return Split(images, np.asarray(labels, np.int32))


def tags(split):
    return split.images[:, 0, 0, 0].astype(int) * 256 + split.images[:, 0, 1, 0]


def test_holdout_per_class_is_balanced_disjoint_and_deterministic():
    labels = np.random.default_rng(0).integers(0, 4, 400)
    s = tagged(labels)
    rest, held = holdout_per_class(s, per_class=7, seed=3)
    assert np.bincount(held.labels, minlength=4).tolist() == [7, 7, 7, 7]
    # Disjoint, complete, order kept, labels travel with their images.
    assert sorted([*tags(rest), *tags(held)]) == list(range(400))
    assert np.all(np.diff(tags(rest)) > 0) and np.all(np.diff(tags(held)) > 0)
    np.testing.assert_array_equal(held.labels, labels[tags(held)])
    np.testing.assert_array_equal(rest.labels, labels[tags(rest)])
    # The documented selection: per class, the first 7 of a RandomState(seed) permutation.
    rs = np.random.RandomState(3)
    chosen = [rs.permutation(np.flatnonzero(labels == c))[:7] for c in range(4)]
    np.testing.assert_array_equal(tags(held), np.sort(np.concatenate(chosen)))
    # Same seed, same split; another seed, other examples.
    np.testing.assert_array_equal(tags(holdout_per_class(s, per_class=7, seed=3)[1]), tags(held))
    assert not np.array_equal(tags(holdout_per_class(s, per_class=7, seed=4)[1]), tags(held))
    with pytest.raises(ValueError, match=r"class 0 of .* has only"):
        holdout_per_class(labelled([0, 1, 1, 1]), per_class=1)


def test_svhn_validation_split_sizes_of_the_paper():
    """With the official class counts: 6,000 validation images and 598,388 training images."""
    rng = np.random.default_rng(0)
    train = Split(np.zeros((73_257, 1, 1, 1), np.uint8), rng.integers(0, 10, 73_257, np.int32))
    extra = Split(np.zeros((531_131, 1, 1, 1), np.uint8), rng.integers(0, 10, 531_131, np.int32))
    rest, valid = svhn_validation_split(train, extra)
    assert (len(rest), len(valid)) == (598_388, 6_000)
    assert np.bincount(valid.labels).tolist() == [600] * 10
    # The first 4,000 validation images come from train (400 per class), then 2,000 from extra.
    assert np.bincount(valid.labels[:4000]).tolist() == [400] * 10
    np.testing.assert_array_equal(
        np.bincount(rest.labels, minlength=10),
        np.bincount(train.labels, minlength=10) + np.bincount(extra.labels, minlength=10) - 600,
    )
    rest2, valid2 = svhn_validation_split(train, extra)
    np.testing.assert_array_equal(valid2.labels, valid.labels)
    np.testing.assert_array_equal(rest2.labels, rest.labels)
