"""``Split``, the container every reader returns, and the paper's validation splits.

A ``Split`` holds host (NumPy) arrays: uint8 images ``(n, height, width, channels)`` with values
0..255 and int32 labels ``(n,)``, plus the class names when the dataset has them. The validation
splits of Network In Network (Lin, Chen, Yan 2013, arXiv:1312.4400), following maxout
(Goodfellow et al. 2013, arXiv:1302.4389):

- CIFAR-10/100: the last 10,000 training images (``holdout_last``).
- SVHN: 400 images per class from ``train`` and 200 per class from ``extra``; the rest of both
  is the training set (``svhn_validation_split``).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Int32, Shaped, UInt8

from gapjax.data._checks import check_int

__all__ = [
    "Split",
    "concatenate_splits",
    "holdout_last",
    "holdout_per_class",
    "svhn_validation_split",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Images and labels of one split of a dataset, on the host.

    Attributes:
      images: uint8 ``(n, height, width, channels)``, values 0..255 (NHWC).
      labels: int32 ``(n,)``, in ``[0, len(class_names))`` when class names are given.
      class_names: the name of each label index, or ``()`` when the dataset has none.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import Split
      >>> s = Split(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 1, 1, 0], np.int32), ("a", "b"))
      >>> s, len(s), s.num_classes
      (Split(images=uint8[4, 2, 2, 1], labels=int32[4], classes=2), 4, 2)
    """

    images: UInt8[np.ndarray, "n height width channels"]
    labels: Int32[np.ndarray, " n"]
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "Split: images must be a uint8 NumPy array (n, height, width, channels), got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')}"
                f"{list(getattr(images, 'shape', ()))}."
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.ndim != 1:
            raise ValueError(
                "Split: labels must be an int32 NumPy array (n,), got "
                f"{type(labels).__name__} {getattr(labels, 'dtype', '')}"
                f"{list(getattr(labels, 'shape', ()))}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"Split: images {list(images.shape)} and labels {list(labels.shape)} differ in "
                "length."
            )
        if len(labels) and labels.min() < 0:
            raise ValueError(f"Split: labels must be non-negative, found {labels.min()}.")
        if self.class_names and len(labels) and labels.max() >= len(self.class_names):
            raise ValueError(
                f"Split: labels reach {labels.max()} but there are {len(self.class_names)} "
                "class names."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        classes = f", classes={len(self.class_names)}" if self.class_names else ""
        return (
            f"Split(images=uint8{list(self.images.shape)}, labels=int32{list(self.labels.shape)}"
            f"{classes})"
        )

    @property
    def num_classes(self) -> int:
        """``len(class_names)``, or ``max(labels) + 1`` when there are no names."""
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def take(self, indices: Shaped[np.ndarray, " m"] | Sequence[int] | slice) -> "Split":
        """The examples at ``indices`` (an index array, a list or a slice), as a new Split."""
        if isinstance(indices, slice):
            return Split(self.images[indices], self.labels[indices], self.class_names)
        indices = np.asarray(indices, np.int64)
        return Split(self.images[indices], self.labels[indices], self.class_names)


def concatenate_splits(*splits: Split) -> Split:
    """Joins splits of the same dataset end to end (images must have the same shape).

    Args:
      *splits: at least one Split; all with the same image shape and class names.

    Returns:
      One Split with the examples of ``splits`` in order.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import Split, concatenate_splits
      >>> a = Split(np.zeros((2, 1, 1, 1), np.uint8), np.array([0, 1], np.int32))
      >>> concatenate_splits(a, a.take([1])).labels
      array([0, 1, 1], dtype=int32)
    """
    if not splits:
        raise ValueError("concatenate_splits: needs at least one split.")
    shapes = {s.images.shape[1:] for s in splits}
    names = {s.class_names for s in splits}
    if len(shapes) > 1 or len(names) > 1:
        raise ValueError(
            f"concatenate_splits: image shapes {sorted(shapes)} or class names differ "
            f"({len(names)} different lists)."
        )
    return Split(
        np.concatenate([s.images for s in splits]),
        np.concatenate([s.labels for s in splits]),
        splits[0].class_names,
    )


def holdout_last(split: Split, *, size: int = 10_000) -> tuple[Split, Split]:
    """Holds out the last ``size`` examples: CIFAR's validation split in the paper.

    Args:
      split: the training split.
      size: how many examples to hold out (10,000 for CIFAR-10/100).

    Returns:
      ``(train, valid)``: the first ``len(split) - size`` examples and the last ``size``.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import Split, holdout_last
      >>> s = Split(np.zeros((5, 1, 1, 1), np.uint8), np.arange(5, dtype=np.int32))
      >>> train, valid = holdout_last(s, size=2)
      >>> train.labels, valid.labels
      (array([0, 1, 2], dtype=int32), array([3, 4], dtype=int32))
    """
    check_int(size, "size", "holdout_last", minimum=1)
    if not 0 < size < len(split):
        raise ValueError(f"holdout_last: size={size} must be in [1, {len(split) - 1}] for {split}.")
    cut = len(split) - size
    return split.take(slice(0, cut)), split.take(slice(cut, None))


def holdout_per_class(split: Split, *, per_class: int, seed: int = 0) -> tuple[Split, Split]:
    """Holds out ``per_class`` examples of every class, chosen at random but deterministically.

    Within each class the held-out examples are the first ``per_class`` of a permutation drawn
    from ``np.random.RandomState(seed)`` (whose stream NumPy keeps fixed across versions); both
    results keep the original order of the examples.

    Args:
      split: the split to divide; every label ``0..num_classes-1`` must have more than
        ``per_class`` examples.
      per_class: how many examples of each class to hold out.
      seed: selects which examples; the same seed always gives the same split.

    Returns:
      ``(rest, held_out)``, with ``per_class * num_classes`` examples in ``held_out``.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import Split, holdout_per_class
      >>> s = Split(np.zeros((6, 1, 1, 1), np.uint8), np.array([0, 1, 0, 1, 0, 1], np.int32))
      >>> rest, held = holdout_per_class(s, per_class=1)
      >>> len(rest), np.bincount(held.labels).tolist()
      (4, [1, 1])
    """
    check_int(per_class, "per_class", "holdout_per_class", minimum=1)
    check_int(seed, "seed", "holdout_per_class")
    rng = np.random.RandomState(seed)
    counts = np.bincount(split.labels, minlength=split.num_classes)
    if counts.min() <= per_class:
        raise ValueError(
            f"holdout_per_class: per_class={per_class} but class {int(counts.argmin())} of "
            f"{split} has only {int(counts.min())} examples."
        )
    chosen = np.concatenate(
        [rng.permutation(np.flatnonzero(split.labels == c))[:per_class] for c in range(len(counts))]
    )
    held = np.zeros(len(split), bool)
    held[chosen] = True
    return split.take(np.flatnonzero(~held)), split.take(np.flatnonzero(held))


def svhn_validation_split(
    train: Split,
    extra: Split,
    *,
    per_class_train: int = 400,
    per_class_extra: int = 200,
    seed: int = 0,
) -> tuple[Split, Split]:
    """SVHN's validation split in the paper: 400 per class from train, 200 per class from extra.

    The held-out images are chosen by ``holdout_per_class`` (deterministic for a seed; the paper's
    exact indices were never published). The training set is everything else of train + extra:
    598,388 images for the official files, and 6,000 for validation.

    Args:
      train: SVHN's ``train`` split.
      extra: SVHN's ``extra`` split.
      per_class_train: held out per class from ``train``.
      per_class_extra: held out per class from ``extra``.
      seed: selects the held-out images.

    Returns:
      ``(train_rest, valid)``: train + extra minus the validation images (train's first), and the
      validation images (train's first).

    Example:
      >>> import numpy as np
      >>> from gapjax.data import Split, svhn_validation_split
      >>> labels = np.tile(np.arange(10, dtype=np.int32), 3)
      >>> s = Split(np.zeros((30, 1, 1, 1), np.uint8), labels)
      >>> rest, valid = svhn_validation_split(s, s, per_class_train=1, per_class_extra=1)
      >>> len(rest), len(valid), np.bincount(valid.labels).tolist()
      (40, 20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    train_rest, train_valid = holdout_per_class(train, per_class=per_class_train, seed=seed)
    extra_rest, extra_valid = holdout_per_class(extra, per_class=per_class_extra, seed=seed + 1)
    return (
        concatenate_splits(train_rest, extra_rest),
        concatenate_splits(train_valid, extra_valid),
    )
