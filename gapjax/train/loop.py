"""The training loop: data on the device, one jitted step, evaluation, checkpoints and resume.

``run(config, workdir)`` is what ``python -m experiments.train`` calls:

1. loads the dataset named by the config (``gapjax.data``), preprocesses it on the device and
   keeps it there whole, replicated over the devices of a 1-D "data" mesh;
2. builds the NIN (``gapjax.models.nin``) and Caffe's SGD (``gapjax.train.optim``);
3. trains with one jitted step per batch (gradient, update and metric sums; the state donated),
   the batch sharded over the mesh and augmented on the device;
4. evaluates (sums over the split, divided once; a padded last batch is masked), logs a JSON line
   per epoch, checkpoints every ``checkpoint_every`` epochs and at the end, and resumes from the
   newest checkpoint when the same workdir is used again;
5. stops with ``DivergenceError`` on a non-finite loss, or when the run is still at chance after
   ``guard_epochs`` epochs, keeping the last good checkpoint.
"""

import dataclasses
import functools
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gapjax
from gapjax import data as gdata
from gapjax import nn, pooling
from gapjax.models import nin
from gapjax.train import config as config_lib
from gapjax.train.checkpoint import Checkpointer
from gapjax.train.optim import caffe_sgd, learning_rate_schedule, lr_multipliers

__all__ = [
    "Dataset",
    "DivergenceError",
    "TrainState",
    "build_model",
    "build_optimizer",
    "evaluate",
    "load_dataset",
    "load_splits",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "restore_model",
    "run",
]


class DivergenceError(RuntimeError):
    """The run diverged (non-finite loss) or is stuck at chance; the last good checkpoint stays."""


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the step count, parameters, the rest of the model's state
    (dropout RNG streams), and the optimizer's state."""

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Preprocessed float32 arrays (NHWC) of a training split and an evaluation split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    eval_name: str


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------

_OFFICIAL = {
    "mnist": gdata.load_mnist,
    "cifar10": gdata.load_cifar10,
    "cifar100": gdata.load_cifar100,
    "cifar10_jpeg": gdata.load_cifar10_jpeg,
}


def load_splits(config: ml_collections.ConfigDict) -> tuple[gdata.Split, gdata.Split, str]:
    """The raw (uint8) training and evaluation splits a config names, before preprocessing.

    Returns:
      ``(train, evaluation, "test" or "validation")``.

    Example:
      >>> from gapjax.train import default_config, load_splits
      >>> train, held_out, name = load_splits(default_config())
      >>> train.images.dtype, len(held_out), name
      (dtype('uint8'), 355, 'test')
    """
    cache = config.cache_dir or None
    if config.dataset == "svhn":
        # The paper (after Goodfellow et al.'s maxout protocol) trains on train + extra minus the
        # 6,000 validation images, whichever split it evaluates on.
        splits = gdata.load_svhn(
            config.data_dir, splits=("train", "test", "extra"), cache_dir=cache
        )
        train, held_out = gdata.svhn_validation_split(splits["train"], splits["extra"])
        if config.eval_split == "test":
            return train, splits["test"], "test"
        return train, held_out, "validation"
    if config.dataset == "digits":
        splits = gdata.load_digits()
    else:
        splits = _OFFICIAL[config.dataset](config.data_dir, cache_dir=cache)
    if config.eval_split == "test":
        return splits["train"], splits["test"], "test"
    if config.dataset.startswith("cifar"):
        train, held_out = gdata.holdout_last(splits["train"], size=10_000)
    else:
        raise ValueError(
            f"config: eval_split='validation' is defined for CIFAR and SVHN (the paper's splits), "
            f"not for dataset={config.dataset!r}."
        )
    return train, held_out, "validation"


def _preprocess(kind: str, train: np.ndarray, evaluate: np.ndarray) -> tuple[Any, Any]:
    """Fits on the training images, applies the same transform to both splits (float32)."""
    if kind == "none":
        return train.astype(np.float32), evaluate.astype(np.float32)
    if kind == "scale":
        return train.astype(np.float32) / 255, evaluate.astype(np.float32) / 255
    if kind == "standardize":
        stats = gdata.fit_channel_stats(train)
        return tuple(gdata.standardize(x, stats=stats) for x in (train, evaluate))
    if kind == "gcn_zca":
        train = gdata.global_contrast_normalize(train, scale=55.0)
        evaluate = gdata.global_contrast_normalize(evaluate, scale=55.0)
        zca = gdata.fit_zca(train, bias=0.1)
        return gdata.zca_whiten(train, zca=zca), gdata.zca_whiten(evaluate, zca=zca)
    # gcn_lcn (SVHN): GCN with scale 1, then 7x7 local contrast normalization.
    return tuple(
        gdata.local_contrast_normalize(gdata.global_contrast_normalize(x, scale=1.0))
        for x in (train, evaluate)
    )


def _subset(split: gdata.Split, size: int, seed: int) -> gdata.Split:
    """``size`` examples drawn without replacement (in stored order), or all when size is 0.

    A random subset, not the first examples: image folders are sorted by class, so their first
    512 images are all airplanes.
    """
    if not size or size >= len(split):
        return split
    keep = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return gdata.Split(split.images[keep], split.labels[keep], split.class_names)


def load_dataset(
    config: ml_collections.ConfigDict,
    *,
    splits: tuple[gdata.Split, gdata.Split, str] | None = None,
) -> Dataset:
    """Reads and preprocesses the dataset a config names (see ``gapjax.train.default_config``).

    Args:
      config: the configuration.
      splits: ``load_splits(config)`` when the caller has read them already (e.g. to show the
        unprocessed images too); read here otherwise.

    Returns:
      A ``Dataset`` of float32 arrays.

    Example:
      >>> from gapjax.train import default_config, load_dataset
      >>> ds = load_dataset(default_config())
      >>> ds.train_images.shape, ds.eval_images.shape, ds.num_classes
      ((1442, 8, 8, 1), (355, 8, 8, 1), 10)
    """
    train, held_out, eval_name = load_splits(config) if splits is None else splits
    train = _subset(train, config.max_train_examples, config.seed)
    held_out = _subset(held_out, config.max_eval_examples, config.seed)
    x_train, x_eval = _preprocess(config.preprocess, train.images, held_out.images)
    num_classes = len(train.class_names) or int(max(train.labels.max(), held_out.labels.max())) + 1
    return Dataset(
        np.asarray(x_train, np.float32),
        train.labels,
        np.asarray(x_eval, np.float32),
        held_out.labels,
        num_classes,
        tuple(train.class_names),
        eval_name,
    )


# --------------------------------------------------------------------------------------------
# Model, optimizer, mesh.
# --------------------------------------------------------------------------------------------


def _head(name: str, num_classes: int, rngs: nnx.Rngs) -> Any:
    if name in ("gap", "fc", "fc_dropout"):
        return name
    if name == "gmp":
        return pooling.global_max_pool
    if name == "gem":
        return nn.GeMPool(channels=num_classes)
    if name == "lse":
        return nn.LSEPool(channels=num_classes)
    if name == "topk":
        return functools.partial(pooling.topk_pool, k=0.2)
    return nn.GWAP(num_classes, class_specific=True, rngs=rngs)  # gwap


def build_model(config: ml_collections.ConfigDict, *, num_classes: int | None = None) -> nin.NIN:
    """The NIN a config describes, initialized from ``config.seed``.

    Returns:
      An ``nin.NIN``.

    Example:
      >>> from gapjax.models import nin
      >>> from gapjax.train import build_model, default_config
      >>> nin.param_count(build_model(default_config()))
      100618
    """
    spec = nin.SPECS[config.model]
    if num_classes is not None and num_classes != spec.num_classes:
        raise ValueError(
            f"config: model={config.model!r} has {spec.num_classes} classes, but the dataset "
            f"{config.dataset!r} has {num_classes}."
        )
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    head = _head(config.head, spec.num_classes, rngs)
    return nin.NIN(spec, head=head, init=config.init, dtype=dtype, rngs=rngs)


def make_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named "data" over ``devices`` (default: every device JAX sees, all hosts).

    Returns:
      A ``jax.sharding.Mesh``.

    Example:
      >>> from gapjax.train import make_mesh
      >>> make_mesh().axis_names
      ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


# --------------------------------------------------------------------------------------------
# Steps.
# --------------------------------------------------------------------------------------------


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def build_optimizer(
    config: ml_collections.ConfigDict, params: Any, model: nin.NIN, steps_per_epoch: int
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """The configured learning-rate schedule and Caffe SGD with per-parameter multipliers.

    Returns:
      ``(schedule, tx)``: step -> learning rate, and the optax transformation.

    Example:
      >>> from flax import nnx
      >>> from gapjax.train import build_model, build_optimizer, default_config
      >>> config = default_config()
      >>> model = build_model(config)
      >>> params = nnx.split(model, nnx.Param, ...)[1]
      >>> schedule, tx = build_optimizer(config, params, model, steps_per_epoch=10)
      >>> float(schedule(0)), float(schedule(200))  # lr / 10 at epoch 20
      (0.1, 0.01...)
    """
    schedule = learning_rate_schedule(
        config.lr,
        schedule=config.schedule,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        boundaries=tuple(config.lr_boundaries),
        decay=config.lr_decay,
        warmup_epochs=config.warmup_epochs,
    )
    multipliers = lr_multipliers(
        params,
        bias_mult=config.bias_lr_mult,
        last_layer=model.last_layer_path(),
        last_layer_mult=config.last_layer_lr_mult,
    )
    tx = caffe_sgd(
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        multipliers=multipliers,
    )
    return schedule, tx


def make_train_step(
    graphdef: Any, tx: optax.GradientTransformation, config: Any, sharding: Any
) -> Callable:
    """The jitted training step: augmentation, gradient, update and metric sums in one call.

    ``step(state, totals, batch, key) -> (state, totals)`` with ``state`` (a ``TrainState``) and
    ``totals`` (running sums of loss, correct predictions and examples) donated. ``graphdef`` is
    the model's graph in training mode (``nnx.split(model, nnx.Param, ...)[0]`` after
    ``model.train()``); ``sharding`` is the batch's (``NamedSharding(mesh, P("data"))``).

    Returns:
      The jitted step.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jax.sharding import NamedSharding, PartitionSpec
      >>> from gapjax.train import (TrainState, build_model, build_optimizer, default_config,
      ...                           make_mesh, make_train_step)
      >>> config = default_config()
      >>> model = build_model(config); model.train()
      >>> graphdef, params, rest = nnx.split(model, nnx.Param, ...)
      >>> _, tx = build_optimizer(config, params, model, steps_per_epoch=1)
      >>> sharding = NamedSharding(make_mesh(), PartitionSpec("data"))
      >>> step = make_train_step(graphdef, tx, config, sharding)
      >>> state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
      >>> totals = {k: jnp.zeros(()) for k in ("loss", "correct", "count")}
      >>> batch = {"images": jnp.zeros((4, 8, 8, 1)), "labels": jnp.arange(4)}
      >>> state, totals = step(state, totals, batch, jax.random.key(0))
      >>> int(state.step), float(totals["count"])
      (1, 4.0)
    """
    augment = config.augment
    padding = config.augment_padding
    flip = 0.5 if config.augment_flip else 0.0

    def step(state: TrainState, totals: dict, batch: dict, key: jax.Array):
        images, labels = batch["images"], batch["labels"]
        if augment:
            images = gdata.random_crop_flip(
                images, key=jax.random.fold_in(key, state.step), padding=padding, flip_prob=flip
            )
        images = jax.lax.with_sharding_constraint(images, sharding)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            logits = model(images)
            loss = jnp.mean(_cross_entropy(logits, labels))
            return loss, (logits, nnx.split(model, nnx.Param, ...)[2])

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = labels.shape[0]
        totals = {
            "loss": totals["loss"] + loss * n,
            "correct": totals["correct"] + jnp.sum(jnp.argmax(logits, -1) == labels),
            "count": totals["count"] + n,
        }
        return TrainState(state.step + 1, params, rest, opt_state), totals

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(graphdef: Any) -> Callable:
    """The jitted evaluation step: sums of loss, top-1 and top-5 hits over a masked batch.

    ``step(params, rest, totals, batch) -> totals`` (``totals`` donated); ``batch`` has
    "images", "labels" and "mask" (False on padding rows). Ties rank by class index, as argmax.

    Returns:
      The jitted step.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> from gapjax.train import make_eval_step
      >>> model = nin.nin_digits(rngs=nnx.Rngs(0)); model.eval()
      >>> graphdef, params, rest = nnx.split(model, nnx.Param, ...)
      >>> totals = {k: jnp.zeros(()) for k in ("loss", "top1", "top5", "count")}
      >>> batch = {"images": jnp.zeros((3, 8, 8, 1)), "labels": jnp.array([0, 5, 9]),
      ...          "mask": jnp.array([True, True, False])}
      >>> totals = make_eval_step(graphdef)(params, rest, totals, batch)
      >>> float(totals["count"]), float(totals["top1"])  # zero logits predict class 0
      (2.0, 1.0)
    """

    def step(params, rest, totals: dict, batch: dict):
        model = nnx.merge(graphdef, params, rest)
        logits = model(batch["images"]).astype(jnp.float32)
        top = min(5, logits.shape[-1])
        labels, mask = batch["labels"], batch["mask"]
        # The label's rank with ties broken by index, as argmax and top_k do: all-equal logits
        # (a dead network) predict class 0, not every class.
        mine = jnp.take_along_axis(logits, labels[:, None], 1)
        before = jnp.arange(logits.shape[-1]) < labels[:, None]
        ranks = jnp.sum((logits > mine) | ((logits == mine) & before), axis=-1)
        return {
            "loss": totals["loss"] + jnp.sum(jnp.where(mask, _cross_entropy(logits, labels), 0)),
            "top1": totals["top1"] + jnp.sum(mask & (ranks < 1)),
            "top5": totals["top5"] + jnp.sum(mask & (ranks < top)),
            "count": totals["count"] + jnp.sum(mask),
        }

    return jax.jit(step, donate_argnums=(2,))


def _zeros(*names: str) -> dict:
    return {n: jnp.zeros((), jnp.float32) for n in names}


def evaluate(
    model: nnx.Module,
    images: Any,
    labels: Any,
    *,
    batch_size: int = 500,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy of a model (in evaluation mode) over a whole split.

    Sums over every example, then divides once; the last batch is padded and masked, so no
    example is dropped or counted twice.

    Args:
      model: an NNX classifier (its mode is switched to evaluation on a copy).
      images, labels: the split (host or device arrays).
      batch_size: examples per evaluation step (a multiple of the mesh size).
      mesh: shard batches over this mesh (default: all devices).

    Returns:
      ``{"loss", "top1", "top5", "count"}`` as Python numbers.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> from gapjax.train import evaluate
      >>> model = nin.nin_digits(rngs=nnx.Rngs(0))
      >>> m = evaluate(model, np.zeros((7, 8, 8, 1), np.float32), np.arange(7), batch_size=4)
      >>> m["count"], round(m["loss"], 4)  # zero input: every logit 0, loss ln 10
      (7, 2.3026)
    """
    mesh = make_mesh() if mesh is None else mesh
    eval_model = nnx.merge(*nnx.split(model))
    eval_model.eval()
    graphdef, params, rest = nnx.split(eval_model, nnx.Param, ...)
    dataset = gdata.DeviceDataset(images, labels, mesh=mesh)
    return _evaluate(make_eval_step(graphdef), params, rest, dataset, batch_size)


def _evaluate(step: Callable, params, rest, dataset: gdata.DeviceDataset, batch_size: int) -> dict:
    totals = _zeros("loss", "top1", "top5", "count")
    for batch in dataset.batches(batch_size, drop_last=False):
        totals = step(params, rest, totals, batch)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "loss": float(totals["loss"]) / count,
        "top1": float(totals["top1"]) / count,
        "top5": float(totals["top5"]) / count,
        "count": int(count),
    }


# --------------------------------------------------------------------------------------------
# Logging.
# --------------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr (epoch, loss, accuracy, images/s, ETA)."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.epochs, self.steps = epochs, steps
        self.start = time.perf_counter()
        self.done_steps = 0
        self.last = ""

    def step(self, epoch: int, step: int, batch_size: int) -> None:
        self.done_steps += 1
        if not self.tty or step % max(1, self.steps // 20):
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done_steps * batch_size / max(elapsed, 1e-9)
        left = ((self.epochs - epoch) * self.steps - step - 1) * batch_size / max(rate, 1e-9)
        width = 20
        filled = int(width * (step + 1) / self.steps)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(
            f"\repoch {epoch + 1}/{self.epochs} [{bar}] {self.last} {rate:,.0f} img/s "
            f"ETA {_clock(left)}   "
        )
        sys.stderr.flush()

    def epoch(self, record: dict) -> None:
        self.last = f"loss {record['train_loss']:.4f} acc {record['train_top1']:.4f}"
        if not self.enabled:
            return
        line = (
            f"epoch {record['epoch']}/{self.epochs}  loss {record['train_loss']:.4f}  "
            f"train {record['train_top1']:.4f}"
        )
        if "eval_top1" in record:
            split, top1, loss = record["eval_split"], record["eval_top1"], record["eval_loss"]
            line += f"  {split} {top1:.4f} (loss {loss:.4f})"
        line += f"  {record['images_per_s']:,.0f} img/s  {_clock(record['elapsed_s'])}"
        sys.stderr.write(("\r" if self.tty else "") + line + " " * 10 + "\n")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _metrics_log(path: Path, resume_epoch: int) -> Any:
    """Opens metrics.jsonl for appending, first dropping records past the resumed epoch (a
    killed run may have logged epochs that no checkpoint holds) and lines that are not JSON
    records (a run killed while writing one), with a warning naming them."""
    if path.exists():
        kept, dropped = [], []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else None
                epoch = record.get("epoch", 0) if record is not None else None
            except (ValueError, AttributeError):
                dropped.append(number)
                continue
            if epoch is not None and epoch <= resume_epoch:
                kept.append(line)
        if dropped:
            warnings.warn(
                f"{path}: dropped lines {dropped}, which are not JSON records.", stacklevel=3
            )
        path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def _tensorboard_writer() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ValueError(
            "config.tensorboard=True needs tensorboardX: pip install tensorboardX"
        ) from None
    return SummaryWriter


def _environment() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "gapjax": gapjax.__version__,
        "commit": commit,
    }


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


def _prepare_workdir(workdir: Path) -> None:
    """Creates the workdir and checks that files can be written there, before any work."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(
            f"workdir {workdir} is an existing file, not a directory; pass a directory "
            "(created if missing)."
        )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise ValueError(f"workdir {workdir} is not writable ({e.strerror or e}).") from None


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON (damaged?): {e}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}.")
    return value


def _check_resume_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return
    saved = _read_json(saved_path)
    current = json.loads(config.to_json())
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if saved.get(k) != current.get(k) and k not in config_lib.RUN_CONTROL_KEYS
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"workdir {workdir} holds a run with another configuration ({details}); resume it "
            "with the same config, or use a new --workdir."
        )


def _guard(record: dict, config, num_classes: int) -> None:
    loss = record["train_loss"]
    if not math.isfinite(loss):
        raise DivergenceError(
            f"epoch {record['epoch']}: the training loss is {loss}; stopping. The last good "
            "checkpoint is kept: lower config.lr or add config.warmup_epochs."
        )
    chance = 1.0 / num_classes
    if (
        config.guard_epochs
        and record["epoch"] >= config.guard_epochs
        and record["train_top1"] < chance + 0.05
        and loss > 0.98 * math.log(num_classes)
    ):
        raise DivergenceError(
            f"epoch {record['epoch']}: still at chance (loss {loss:.4f} ~ ln {num_classes} = "
            f"{math.log(num_classes):.4f}, accuracy {record['train_top1']:.3f}): plain NIN with "
            "N(0, 0.05^2) init is known to get stuck here. Stopping; the last good checkpoint is "
            "kept. Try another config.seed, config.warmup_epochs, or a lower config.lr (in a "
            "separately named config)."
        )


def run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    mesh: Mesh | None = None,
    dataset: Dataset | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Trains and evaluates the configured NIN in ``workdir``, resuming if it holds a checkpoint.

    Writes ``config.json``, ``metrics.jsonl`` (a JSON line per epoch), ``checkpoints/`` and,
    at the end, ``results.json``.

    Args:
      config: a validated configuration (``gapjax.train.default_config`` has every key).
      workdir: the run's directory.
      mesh: the device mesh (default: every device, one "data" axis).
      dataset: preloaded data (default: ``load_dataset(config)``).
      on_epoch: called with each epoch's record (tests, notebooks).

    Returns:
      The results: final evaluation metrics, epochs, wall time, images/s, environment, and
      ``complete: True``. With ``config.time_limit_minutes``, a run that reaches the limit
      checkpoints after the current epoch and returns ``{"complete": False, "epochs": n}``:
      run it again to continue (how a long run fits into commands of limited length).

    Raises:
      ValueError: an invalid config, unreadable data, a workdir that is a file or not writable,
        or one that holds a run with another config (messages name the key or path);
        ``CheckpointError`` (a ValueError) when the workdir has checkpoints but none restores.
      DivergenceError: a non-finite loss, or still at chance after ``guard_epochs``.

    Example:
      >>> import tempfile
      >>> from gapjax.train import default_config, quick, run
      >>> config = quick(default_config())
      >>> config.progress = False
      >>> results = run(config, tempfile.mkdtemp())
      >>> results["epochs"], results["eval"]["count"]
      (2, 256)
    """
    config_lib.validate(config)
    workdir = Path(workdir)
    _prepare_workdir(workdir)
    _check_resume_config(workdir, config)
    writer = _tensorboard_writer() if config.tensorboard else None  # fails before any work
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")

    mesh = make_mesh() if mesh is None else mesh
    n_devices = mesh.devices.size
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % n_devices:
            raise ValueError(
                f"config.{key}={config[key]} must be a multiple of the {n_devices} devices of the "
                "mesh (each device gets an equal share of a batch)."
            )
    data = load_dataset(config) if dataset is None else dataset
    train_set = gdata.DeviceDataset(data.train_images, data.train_labels, mesh=mesh)
    eval_set = gdata.DeviceDataset(data.eval_images, data.eval_labels, mesh=mesh)
    steps_per_epoch = train_set.num_batches(config.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.batch_size={config.batch_size} is larger than the {len(train_set)} training "
            "examples."
        )

    model = build_model(config, num_classes=data.num_classes)
    model.train()
    graph_train, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    graph_eval = nnx.split(model, nnx.Param, ...)[0]
    schedule, tx = build_optimizer(config, params, model, steps_per_epoch)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
    state = jax.device_put(state, replicated)

    checkpoints = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    # The newest checkpoint that restores (a damaged newer one is set aside with a warning);
    # checkpoints that all fail raise CheckpointError: a run never starts over silently.
    start_epoch, state = checkpoints.restore_latest(like=state, set_aside=True)
    start_epoch = start_epoch or 0
    log = _metrics_log(workdir / "metrics.jsonl", start_epoch)
    board = writer(str(workdir / "tensorboard")) if writer is not None else None

    train_step = make_train_step(
        graph_train, tx, config, NamedSharding(mesh, PartitionSpec("data"))
    )
    eval_step = make_eval_step(graph_eval)
    base_key = jax.random.key(config.seed)
    progress = _Progress(config.progress, config.epochs, steps_per_epoch)
    start = time.perf_counter()
    train_time, images_seen = 0.0, 0
    record: dict = {}
    try:
        for epoch in range(start_epoch, config.epochs):
            epoch_key = jax.random.fold_in(base_key, epoch)
            order_key, augment_key = jax.random.split(epoch_key)
            totals = jax.device_put(_zeros("loss", "correct", "count"), replicated)
            t0 = time.perf_counter()
            batches = train_set.batches(config.batch_size, key=order_key, drop_last=True)
            for i, batch in enumerate(batches):
                state, totals = train_step(state, totals, batch, augment_key)
                progress.step(epoch, i, config.batch_size)
            totals = jax.device_get(totals)
            seconds = time.perf_counter() - t0
            train_time += seconds
            images_seen += int(totals["count"])
            record = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "lr": float(schedule(int(state.step) - 1)),
                "train_loss": float(totals["loss"]) / float(totals["count"]),
                "train_top1": float(totals["correct"]) / float(totals["count"]),
                "images_per_s": float(totals["count"]) / seconds,
                "elapsed_s": time.perf_counter() - start,
            }
            _guard(record, config, data.num_classes)
            last = epoch + 1 == config.epochs
            if (epoch + 1) % config.eval_every == 0 or last:
                metrics = _evaluate(
                    eval_step, state.params, state.rest, eval_set, config.eval_batch_size
                )
                record.update(
                    eval_split=data.eval_name,
                    eval_loss=metrics["loss"],
                    eval_top1=metrics["top1"],
                    eval_top5=metrics["top5"],
                )
            out_of_time = bool(
                config.time_limit_minutes
                and not last
                and time.perf_counter() - start > 60 * config.time_limit_minutes
            )
            if (epoch + 1) % config.checkpoint_every == 0 or last or out_of_time:
                checkpoints.save(epoch + 1, state)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if board is not None:
                for k, v in record.items():
                    if isinstance(v, float):
                        board.add_scalar(k, v, record["epoch"])
            progress.epoch(record)
            if on_epoch is not None:
                on_epoch(record)
            if out_of_time:
                return {"name": config.name, "complete": False, "epochs": epoch + 1}
    finally:
        checkpoints.close()
        log.close()
        if board is not None:
            board.close()

    final_epoch = checkpoints.latest_epoch() or 0
    metrics = _evaluate(eval_step, state.params, state.rest, eval_set, config.eval_batch_size)
    results = {
        "name": config.name,
        "complete": True,
        "dataset": config.dataset,
        "eval_split": data.eval_name,
        "epochs": final_epoch,
        "eval": metrics,
        "error_percent": 100 * (1 - metrics["top1"]),
        "train_wall_s": train_time,
        "images_per_s": images_seen / train_time if train_time else None,
        "parameters": nin.param_count(model),
        "environment": _environment(),
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def restore_model(workdir: str | Path, *, epoch: int | None = None) -> tuple[nnx.Module, Any]:
    """The model of a run's checkpoint (newest by default), in evaluation mode, with its config.

    Returns:
      ``(model, config)``.

    Example:
      >>> from gapjax.train import restore_model
      >>> restore_model("no/such/run")
      Traceback (most recent call last):
      ...
      FileNotFoundError: no/such/run/config.json not found: is no/such/run a training workdir?
    """
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(_read_json(config_path))
    if isinstance(config.get("lr_boundaries"), list):
        config.lr_boundaries = tuple(config.lr_boundaries)
    try:
        config_lib.validate(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    model = build_model(config)
    model.train()
    graph_train, params, rest = nnx.split(model, nnx.Param, ...)
    _, tx = build_optimizer(config, params, model, 1)  # only the state's structure matters
    like = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
    checkpoints = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        if epoch is None:  # the newest that restores, warning about damaged newer ones
            epoch, state = checkpoints.restore_latest(like=like)
            if epoch is None:
                raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint.")
        else:
            state = checkpoints.restore(epoch, like=like)
    finally:
        checkpoints.close()
    model = nnx.merge(graph_train, state.params, state.rest)
    model.eval()
    return model, config
