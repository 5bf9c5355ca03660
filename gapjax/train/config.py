"""The experiment configuration: every key a run understands, its default, and validation.

``configs/<experiment>.py`` start from ``default_config()`` and change what their experiment
needs; ``validate`` rejects unknown keys (with the closest known ones) and impossible values
before any work is done; ``quick`` shrinks any configuration for smoke tests.
"""

import difflib
import itertools
import math
import numbers

import ml_collections

__all__ = ["CHOICES", "RUN_CONTROL_KEYS", "default_config", "did_you_mean", "quick", "validate"]

CHOICES = {
    "dataset": ("digits", "mnist", "cifar10", "cifar100", "svhn", "cifar10_jpeg"),
    "preprocess": ("none", "scale", "standardize", "gcn_zca", "gcn_lcn"),
    "eval_split": ("test", "validation"),
    "model": ("digits", "mnist", "cifar10", "cifar10_caffe", "cifar100", "svhn"),
    "head": ("gap", "fc", "fc_dropout", "gmp", "gem", "lse", "gwap", "topk"),
    "init": ("spec", "he"),
    "dtype": ("float32", "bfloat16"),
    "schedule": ("step", "cosine", "constant"),
}

# Keys that may change when a run resumes in the same workdir (more epochs, logging, ...).
RUN_CONTROL_KEYS = (
    "epochs",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "progress",
    "tensorboard",
    "cam_images",
    "lr_boundaries",
    "time_limit_minutes",
)


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands, with its default (a small NIN on the embedded digits).

    Returns:
      A ``ConfigDict`` (keys are locked: assigning an unknown key raises).

    Example:
      >>> from gapjax.train import default_config
      >>> default_config().dataset
      'digits'
    """
    c = ml_collections.ConfigDict()
    c.name = "digits_nin"
    # Data.
    c.dataset = "digits"
    c.data_dir = "data"  # official files (or the JPEG tarball for cifar10_jpeg)
    c.cache_dir = ""  # decoded-array cache ("" = none)
    c.preprocess = "standardize"
    c.eval_split = "test"  # or "validation": the paper's held-out split
    c.augment = False  # zero-pad, random crop, horizontal flip
    c.augment_padding = 4
    c.augment_flip = True
    c.max_train_examples = 0  # 0 = all
    c.max_eval_examples = 0
    # Model.
    c.model = "digits"
    c.head = "gap"
    c.init = "spec"  # "spec": the paper's N(0, 0.05^2); "he": fan-in normal (a deviation)
    c.dtype = "float32"  # "bfloat16": mixed precision (parameters stay float32)
    # Optimization (REFERENCE.md section 3: Caffe's SGD).
    c.batch_size = 128
    c.eval_batch_size = 500
    c.epochs = 30
    c.lr = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.bias_lr_mult = 2.0
    c.last_layer_lr_mult = 0.1
    c.schedule = "step"
    c.lr_boundaries = (20, 25)  # epochs (step schedule)
    c.lr_decay = 0.1
    c.warmup_epochs = 0
    # Run.
    c.seed = 0
    c.eval_every = 1
    c.checkpoint_every = 5
    c.keep_checkpoints = 2
    c.guard_epochs = 3  # stop if still at chance after this many epochs (0 disables)
    c.time_limit_minutes = 0.0  # > 0: checkpoint and stop after the epoch that passes it
    c.progress = True
    c.tensorboard = False
    c.cam_images = 0  # after training, render CAMs of this many test images (experiments.train)
    c.quick = False
    c.lock()
    return c


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A shrunken copy of a configuration for smoke tests: 2 epochs on 512 examples.

    Returns:
      A new ``ConfigDict``.

    Example:
      >>> from gapjax.train import default_config, quick
      >>> quick(default_config()).epochs
      2
    """
    c = ml_collections.ConfigDict(config.to_dict())
    c.epochs = min(c.epochs, 2)
    c.max_train_examples = min(c.max_train_examples or 512, 512)
    c.max_eval_examples = min(c.max_eval_examples or 256, 256)
    c.eval_batch_size = min(c.eval_batch_size, 256)
    c.checkpoint_every = 1
    c.guard_epochs = 0
    c.quick = True
    c.lock()
    return c


# The schema: every key of ``default_config`` has exactly one rule (tests check it). Numbers are
# finite; ints are ints, not bools (``True`` is an int to Python, never a batch size).
_BOOLS = ("augment", "augment_flip", "progress", "tensorboard", "quick")
_STRINGS = ("name", "data_dir", "cache_dir", *CHOICES)
_POSITIVE_INTS = (
    "batch_size",
    "eval_batch_size",
    "epochs",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
)
_NON_NEGATIVE_INTS = (
    "augment_padding",
    "max_train_examples",  # 0 = all
    "max_eval_examples",
    "seed",
    "guard_epochs",  # 0 disables the guard
    "cam_images",
)
_POSITIVE_NUMBERS = ("lr", "lr_decay")
_NON_NEGATIVE_NUMBERS = (
    "weight_decay",
    "bias_lr_mult",
    "last_layer_lr_mult",
    "warmup_epochs",
    "time_limit_minutes",  # 0 = no limit
)
_UNIT_INTERVAL = ("momentum",)  # [0, 1)
_SEQUENCES = ("lr_boundaries",)
SCHEMA_KEYS = (
    *_BOOLS,
    *_STRINGS,
    *_POSITIVE_INTS,
    *_NON_NEGATIVE_INTS,
    *_POSITIVE_NUMBERS,
    *_NON_NEGATIVE_NUMBERS,
    *_UNIT_INTERVAL,
    *_SEQUENCES,
)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _problem(key: str, value) -> str | None:
    """What is wrong with ``config[key] = value``, or None."""
    if key in _BOOLS and not isinstance(value, bool):
        return f"{key} must be True or False, got {value!r}"
    if key in _STRINGS and not isinstance(value, str):
        return f"{key} must be a string, got {value!r}"
    if key in CHOICES and value not in CHOICES[key]:
        return f"{key}={value!r} is not one of {CHOICES[key]}"
    if key in _POSITIVE_INTS and not (_is_int(value) and value > 0):
        return f"{key} must be a positive int, got {value!r}"
    if key in _NON_NEGATIVE_INTS and not (_is_int(value) and value >= 0):
        return f"{key} must be an int >= 0, got {value!r}"
    if key in _POSITIVE_NUMBERS and not (_is_number(value) and value > 0):
        return f"{key} must be a finite number > 0, got {value!r}"
    if key in _NON_NEGATIVE_NUMBERS and not (_is_number(value) and value >= 0):
        return f"{key} must be a finite number >= 0, got {value!r}"
    if key in _UNIT_INTERVAL and not (_is_number(value) and 0 <= value < 1):
        return f"{key} must be a number in [0, 1), got {value!r}"
    if key in _SEQUENCES:
        ok = isinstance(value, tuple | list) and all(_is_number(e) and e > 0 for e in value)
        if not ok or any(a >= b for a, b in itertools.pairwise(value)):
            return f"{key} must be increasing positive epochs, got {value!r}"
    return None


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming every unknown key and every impossible value.

    Every key is checked against its rule: booleans are ``True``/``False`` (not strings or
    ints), ints are ints (not bools or floats), numbers are finite, sizes and counts are not
    negative (``0`` means "all" or "off" where the default says so), ``momentum`` lies in
    [0, 1), ``lr_boundaries`` are increasing positive epochs, and named choices are one of
    ``CHOICES``. Each problem names the key and the value.

    Returns:
      None.

    Example:
      >>> import ml_collections
      >>> from gapjax.train import default_config, validate
      >>> c = default_config().to_dict()
      >>> c["epoch"] = 10
      >>> validate(ml_collections.ConfigDict(c))
      Traceback (most recent call last):
      ...
      ValueError: config: unknown key 'epoch' (did you mean 'epochs'?).
      >>> c = default_config()
      >>> c.momentum = float("nan")
      >>> validate(c)
      Traceback (most recent call last):
      ...
      ValueError: config: momentum must be a number in [0, 1), got nan.
    """
    known = default_config()
    problems = []
    for key in config.keys():
        if key not in known:
            problems.append(f"unknown key {key!r}{did_you_mean(key)}")
        else:
            problem = _problem(key, config[key])
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError("config: " + "; ".join(problems) + ".")


def did_you_mean(key: str) -> str:
    """`` (did you mean 'epochs'?)`` for the closest known key, or ``""``.

    Returns:
      A string to append to a message.

    Example:
      >>> from gapjax.train.config import did_you_mean
      >>> did_you_mean("epoch"), did_you_mean("zzz")
      (" (did you mean 'epochs'?)", '')
    """
    close = difflib.get_close_matches(key, list(default_config().keys()), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
