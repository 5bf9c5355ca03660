"""Orbax checkpoints of a training state, keyed by epoch.

Any pytree is stored as a nested dict of arrays named by its key paths (so NNX states, optax
states and typed PRNG keys all round-trip), with Orbax's atomic commit: a run killed while saving
leaves the previous checkpoint intact, and a partial one is never restored.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gapjax.train.optim import path_names

__all__ = ["Checkpointer"]


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

    def save(self, epoch: int, tree: Any) -> None:
        """Starts saving ``tree`` as the checkpoint of ``epoch`` (asynchronously).

        Returns:
          None.
        """
        self.manager.save(epoch, args=ocp.args.StandardSave(_nested(tree)))

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
        """
        target = _nested(like)
        restored = self.manager.restore(epoch, args=ocp.args.StandardRestore(target))
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

    def close(self) -> None:
        """Waits for pending saves and releases the manager.

        Returns:
          None.
        """
        self.manager.wait_until_finished()
        self.manager.close()
