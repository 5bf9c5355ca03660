"""Orbax checkpoints of a training state, keyed by epoch.

Any pytree is stored as a nested dict of arrays named by its key paths (so NNX states, optax
states and typed PRNG keys all round-trip), with Orbax's atomic commit: a run killed while saving
leaves the previous checkpoint intact, and a partial one is never restored.

Orbax does not check what it reads back: a flipped byte in a data file restores other numbers.
So every save also records the CRC-32 of each array in ``crc32.json`` beside the checkpoints,
and a restore compares them (checkpoints written before this file existed restore unchecked).
A checkpoint that cannot be restored (truncated, altered or missing files) raises
``CheckpointError`` naming it and what is wrong; ``restore_latest`` then falls back to the newest
one that restores, with a warning.
"""

import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gapjax.train.optim import path_names

__all__ = ["CheckpointError", "Checkpointer"]

_CRC_FILE = "crc32.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be restored (corrupt, truncated or incomplete); the message names it."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _nested(tree: Any) -> dict:
    """``{"0": {"blocks": {...}}}``: a dict of dicts of arrays, keyed by the tree's paths."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(n) for n in path_names(path)] or ["leaf"]
        node = out
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    return out


def _crc32s(tree: Any) -> dict[str, str] | None:
    """``{"a/b": "crc32 dtype shape"}`` of every array; None where one is not on this host."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        array = np.ascontiguousarray(jax.device_get(leaf))
        name = "/".join(str(n) for n in path_names(path)) or "leaf"
        out[name] = f"{zlib.crc32(array.view(np.uint8))} {array.dtype} {list(array.shape)}"
    return out


def _first_line(e: BaseException) -> str:
    """An exception in one line (TensorStore's messages run to 150 lines of JSON spec)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text[:300]}"


@contextlib.contextmanager
def _quiet_orbax_readers() -> Iterator[None]:
    """When one array of a checkpoint fails to read, Orbax's other read coroutines fail too and
    Python prints each as "Exception ignored in: <coroutine ...>" with its TensorStore spec, and
    reads still in flight report "Event loop is closed" when they finish; those (and only
    those) are dropped while restoring, since the first error is reported."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        name = getattr(getattr(unraisable, "object", None), "__qualname__", "")
        late = str(getattr(unraisable, "exc_value", "")) == "Event loop is closed"
        if "_read_array" not in name and not late:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _unnested(restored: dict, like: Any) -> Any:
    """The inverse of ``_nested``: ``restored``'s arrays in the structure of ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    values = []
    for path, leaf in leaves:
        value = _lookup(restored, path)
        if _is_key(leaf):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
        elif isinstance(leaf, np.ndarray | float | int):
            value = np.asarray(value)
        values.append(value)
    return jax.tree_util.tree_unflatten(treedef, values)


def _lookup(nested: dict, path: Any) -> Any:
    node = nested
    for name in [str(n) for n in path_names(path)] or ["leaf"]:
        node = node[name]
    return node


class Checkpointer:
    """Saves and restores training states in ``directory``, one checkpoint per epoch.

    Args:
      directory: where the checkpoints live (created if missing).
      keep: how many of the newest checkpoints to keep.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> from gapjax.train import Checkpointer
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
      >>> ckpt.save(3, {"w": jnp.ones(2)}); ckpt.wait()
      >>> ckpt.latest_epoch(), ckpt.restore(3, like={"w": jnp.zeros(2)})
      (3, {'w': Array([1., 1.], dtype=float32)})
    """

    def __init__(self, directory: str | Path, *, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None.

        Returns:
          An int or None.
        """
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The epochs of every complete checkpoint, oldest first.

        Returns:
          A list of ints.
        """
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, tree: Any) -> None:
        """Starts saving ``tree`` as the checkpoint of ``epoch`` (asynchronously), after writing
        the CRC-32 of its arrays to ``crc32.json``.

        Returns:
          None.
        """
        crcs = _crc32s(tree)
        if crcs is not None and jax.process_index() == 0:
            steps = self.manager.all_steps()
            newest = max(steps, default=-1)  # newer entries may belong to a save still running
            table = {
                k: v
                for k, v in self._crc_table().items()
                if k.isdigit() and (int(k) in steps or int(k) > newest)
            }
            table[str(epoch)] = crcs
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{_CRC_FILE}.")
            with os.fdopen(fd, "w") as f:
                json.dump(table, f)
            os.replace(tmp, self.directory / _CRC_FILE)
        self.manager.save(epoch, args=ocp.args.StandardSave(_nested(tree)))

    def _crc_table(self) -> dict:
        try:
            table = json.loads((self.directory / _CRC_FILE).read_text())
        except (OSError, ValueError):
            return {}  # missing or damaged: checkpoints restore unchecked
        return table if isinstance(table, dict) else {}

    def wait(self) -> None:
        """Blocks until pending saves are committed.

        Returns:
          None.
        """
        self.manager.wait_until_finished()

    def restore(self, epoch: int, *, like: Any) -> Any:
        """Restores the checkpoint of ``epoch`` into the structure (and shardings) of ``like``.

        Returns:
          A tree like ``like``.

        Raises:
          FileNotFoundError: there is no checkpoint of ``epoch``.
          CheckpointError: it cannot be restored, or its arrays do not match their CRC-32s;
            the message names the checkpoint's folder and what is wrong.
        """
        where = self.directory / str(epoch)
        if epoch not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of epoch {epoch} in {self.directory} (it has {self.epochs()})."
            )
        problem = None
        with _quiet_orbax_readers():
            try:
                # A checkpointer of its own: a failed restore leaves the manager's handler
                # registry in a state where older, intact checkpoints fail too.
                with ocp.StandardCheckpointer() as reader:
                    restored = reader.restore(where / "default", _nested(like))
                tree = _unnested(restored, like)
            except Exception as e:  # Orbax and TensorStore raise many kinds for damaged files
                problem = _first_line(e)
            if problem is not None:
                # Let the reads still in flight finish, and finalize the failed readers, while
                # their reports are dropped (a failure path only: local reads take milliseconds).
                for _ in range(5):
                    time.sleep(0.02)
                    gc.collect()
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {where} cannot be restored (damaged, truncated or missing files?): "
                f"{problem}"
            )
        expected = self._crc_table().get(str(epoch))
        if expected is not None:
            actual = _crc32s(tree)
            if actual is not None and actual != expected:
                bad = sorted(
                    k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)
                )
                raise CheckpointError(
                    f"checkpoint {where} restores other numbers than were saved (CRC-32 "
                    f"mismatch in {bad[:3]}{' ...' if len(bad) > 3 else ''}): a data file is "
                    "damaged."
                )
        return tree

    def restore_latest(self, *, like: Any, set_aside: bool = False) -> tuple[int | None, Any]:
        """Restores the newest checkpoint that restores, warning about each newer one that does
        not (naming it and what is wrong).

        Args:
          like: the structure to restore into (see ``restore``).
          set_aside: move the unrestorable newer checkpoints to ``<directory>.unrestorable/``
            (kept for inspection), so that a resumed run can save those epochs again.

        Returns:
          ``(epoch, tree)``, or ``(None, like)`` when there is no checkpoint at all.

        Raises:
          CheckpointError: there are checkpoints but none restores (nothing is moved); the
            message names the directory and each checkpoint's problem. A run never starts over
            silently: move the directory away to start from scratch.
        """
        broken: list[tuple[int, CheckpointError]] = []
        for epoch in reversed(self.epochs()):
            try:
                tree = self.restore(epoch, like=like)
            except CheckpointError as e:
                broken.append((epoch, e))
                continue
            for bad, error in broken:
                moved = ""
                if set_aside:
                    moved = f"; moved to {self._set_aside(bad)}"
                warnings.warn(
                    f"{error}. Resuming from the checkpoint of epoch {epoch} instead{moved}.",
                    stacklevel=2,
                )
            if broken and set_aside:
                self.manager.reload()
            return epoch, tree
        if broken:
            details = "; ".join(str(e) for _, e in broken)
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores, so the run cannot resume: "
                f"{details}. Move {self.directory} away to start the run from scratch."
            )
        return None, like

    def _set_aside(self, epoch: int) -> Path:
        folder = self.directory.with_name(self.directory.name + ".unrestorable")
        folder.mkdir(exist_ok=True)
        dest, n = folder / str(epoch), 1
        while dest.exists():
            n += 1
            dest = folder / f"{epoch}-{n}"
        shutil.move(self.directory / str(epoch), dest)
        return dest

    def close(self) -> None:
        """Waits for pending saves and releases the manager.

        Returns:
          None.
        """
        self.manager.wait_until_finished()
        self.manager.close()
