"""The experiment configuration: every key a run understands, its default, and validation.

``configs/<experiment>.py`` start from ``default_config()`` and change what their experiment
needs; ``validate`` rejects unknown keys (with the closest known ones) and impossible values
before any work is done; ``quick`` shrinks any configuration for smoke tests.
"""

import difflib
import math

import ml_collections

__all__ = ["CHOICES", "RUN_CONTROL_KEYS", "default_config", "quick", "validate"]

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


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming every unknown key and every impossible value.

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
    """
    known = default_config()
    problems = []
    for key in config.keys():
        if key not in known:
            close = difflib.get_close_matches(key, list(known.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
    for key, options in CHOICES.items():
        if key in config and config[key] not in options:
            problems.append(f"{key}={config[key]!r} is not one of {options}")
    positive = ("batch_size", "eval_batch_size", "epochs", "eval_every", "checkpoint_every")
    for key in (*positive, "keep_checkpoints"):
        if key in config and (not isinstance(config[key], int) or config[key] <= 0):
            problems.append(f"{key} must be a positive int, got {config[key]!r}")
    for key in ("lr", "lr_decay"):
        if key in config and not (math.isfinite(config[key]) and config[key] > 0):
            problems.append(f"{key} must be > 0, got {config[key]!r}")
    for key in (
        "momentum",
        "weight_decay",
        "warmup_epochs",
        "guard_epochs",
        "cam_images",
        "time_limit_minutes",
    ):
        if key in config and config[key] < 0:
            problems.append(f"{key} must be >= 0, got {config[key]!r}")
    if "lr_boundaries" in config:
        b = tuple(config.lr_boundaries)
        if list(b) != sorted(b) or any(e <= 0 for e in b):
            problems.append(f"lr_boundaries must be increasing positive epochs, got {b}")
    if problems:
        raise ValueError("config: " + "; ".join(problems) + ".")
