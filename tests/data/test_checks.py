"""The settings sweep of gapjax.data (issue 20): every size, count and rate of the readers,
splits, transforms and pipelines, given a bool, a negative, a non-integer, NaN or inf, raises
ValueError naming the function and the argument, before any work."""

import math

import jax
import numpy as np
import pytest

from gapjax import data as gdata

X = np.zeros((8, 6, 6, 1), np.uint8)
Y = np.arange(8, dtype=np.int32) % 2
SPLIT = gdata.Split(X, Y, ("a", "b"))
F = np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype(np.float32)
KEY = jax.random.key(0)


def _batches(batch_size):
    return list(gdata.DeviceDataset(F, Y).batches(batch_size))


def _host_batches(batch_size):
    return list(gdata.host_batches(X, Y, batch_size=batch_size))


# (function, argument, positional arguments, other keywords, kind of value). Values not of the
# annotated type (a float for an int) are left to the annotation checks (jaxtyping + beartype).
CASES = [
    (gdata.holdout_last, "size", (SPLIT,), {}, "int"),
    (gdata.holdout_per_class, "per_class", (SPLIT,), {}, "int"),
    (gdata.holdout_per_class, "seed", (SPLIT,), {"per_class": 1}, "int0"),
    (gdata.random_crop_flip, "padding", (F,), {"key": KEY}, "int0"),
    (gdata.random_crop_flip, "crop_size", (F,), {"key": KEY, "padding": 1}, "int0"),
    (_batches, "batch_size", (), {}, "int"),
    (_host_batches, "batch_size", (), {}, "int"),
    (gdata.fit_channel_stats, "chunk_size", (X,), {}, "int"),
    (gdata.fit_zca, "chunk_size", (F,), {}, "int"),
    (gdata.fit_zca, "bias", (F,), {}, "real0"),
    (gdata.global_contrast_normalize, "min_divisor", (F,), {}, "real0"),
    (gdata.local_contrast_normalize, "kernel_size", (F,), {}, "int"),
    (gdata.local_contrast_normalize, "sigma", (F,), {}, "real+"),
    (gdata.local_contrast_normalize, "threshold", (F,), {}, "real0"),
    (gdata.load_digits, "test_every", (), {}, "int"),
]

BAD = {
    "int": [True, False, 0, -1],
    "int0": [True, -1, -7],
    "real0": [math.nan, math.inf, -math.inf, -1.0],
    "real+": [math.nan, math.inf, 0.0, -1.0],
}


@pytest.mark.parametrize(
    "fn, name, args, kwargs, kind", CASES, ids=[f"{c[0].__name__}-{c[1]}" for c in CASES]
)
def test_bad_settings_raise_naming_the_function_and_argument(fn, name, args, kwargs, kind):
    shown = fn.__name__.lstrip("_")
    for value in BAD[kind]:
        with pytest.raises(ValueError, match=rf"{shown}: {name}={value!r} must be"):
            fn(*args, **kwargs, **{name: value})


def test_load_image_folder_size_and_mode(tmp_path):
    for size in [(0, 3), (-1, 3), (True, 3), (3, False)]:
        with pytest.raises(ValueError, match=r"load_image_folder: size=.* must be \(height"):
            gdata.load_image_folder(tmp_path, size=size)
    with pytest.raises(ValueError, match=r"load_image_folder: mode='CMYK'"):
        gdata.load_image_folder(tmp_path, mode="CMYK")
