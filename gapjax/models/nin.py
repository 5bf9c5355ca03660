"""Network In Network (Lin, Chen, Yan 2013): mlpconv blocks and a global-average-pooling head.

The paper's architectures, as in the authors' definitions::

    model = nin_cifar10(rngs=nnx.Rngs(0))                  # 966,986 parameters
    logits = model(images)                                 # (batch, 32, 32, 3) -> (batch, 10)
    logits, extra = model(images, return_intermediates=True)
    extra["maps"]                                          # class confidence maps (batch, 8, 8, 10)

Every convolution has stride 1 and a ReLU (the last 1x1 layer too, before the pool); the 3x3
stride-2 pools between blocks round up (Caffe/cuda-convnet), so 32 -> 16 -> 8 and 28 -> 14 -> 7;
dropout 0.5 follows every block but the last; weights start N(0, 0.05^2) (CIFAR-100: 0.001 for
conv1, 0.01 for cccp1-2), biases 0. ``model.train()`` / ``model.eval()`` switch dropout.
"""

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax import nn, pooling
from gapjax.pooling._windows import output_length

__all__ = [
    "NIN",
    "SPECS",
    "Block",
    "NINSpec",
    "nin",
    "nin_cifar10",
    "nin_cifar10_caffe",
    "nin_cifar100",
    "nin_digits",
    "nin_mnist",
    "nin_svhn",
    "param_count",
]


@dataclasses.dataclass(frozen=True)
class Block:
    """One mlpconv block: a k x k convolution (padding k // 2), then 1x1 convolutions.

    Attributes:
      kernel_size: of the first convolution.
      features: output channels of each layer.
      init_std: standard deviation of the weights' normal init, one for all or one per layer.
    """

    kernel_size: int
    features: tuple[int, ...]
    init_std: float | tuple[float, ...] = 0.05

    def stds(self) -> tuple[float, ...]:
        """One init standard deviation per layer.

        Returns:
          A tuple as long as ``features``.
        """
        if isinstance(self.init_std, tuple):
            return self.init_std
        return (self.init_std,) * len(self.features)


@dataclasses.dataclass(frozen=True)
class NINSpec:
    """A NIN architecture: its blocks and the pools between them.

    Attributes:
      name: the architecture's name.
      input_shape: ``(height, width, channels)`` of its images.
      blocks: the mlpconv blocks; the last one's final width is the number of classes.
      pools: the pool after each block but the last ("max" or "avg", 3x3 stride 2, Caffe
        rounding).
      dropout: the dropout rate after each block but the last.
    """

    name: str
    input_shape: tuple[int, int, int]
    blocks: tuple[Block, ...]
    pools: tuple[str, ...]
    dropout: float = 0.5

    @property
    def num_classes(self) -> int:
        return self.blocks[-1].features[-1]

    def spatial_sizes(self) -> list[int]:
        """The side of the feature maps in each block (after the Caffe-rounded pools).

        Returns:
          One size per block, e.g. ``[32, 16, 8]`` for CIFAR-10.
        """
        sizes = [self.input_shape[0]]
        for _ in self.pools:
            sizes.append(output_length(sizes[-1], 3, 2, (0, 0), 1, True, "caffe"))
        return sizes


def _blocks(*blocks: tuple[int, tuple[int, ...]]) -> tuple[Block, ...]:
    return tuple(Block(k, f) for k, f in blocks)


SPECS: dict[str, NINSpec] = {
    "cifar10": NINSpec(
        "cifar10",
        (32, 32, 3),
        _blocks((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, 10))),
        ("max", "max"),
    ),
    "cifar10_caffe": NINSpec(
        "cifar10_caffe",
        (32, 32, 3),
        _blocks((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, 10))),
        ("max", "avg"),
    ),
    "cifar100": NINSpec(
        "cifar100",
        (32, 32, 3),
        (
            Block(5, (192, 160, 96), (0.001, 0.01, 0.01)),
            Block(5, (192, 192, 192)),
            Block(3, (192, 192, 100)),
        ),
        ("max", "max"),
    ),
    "svhn": NINSpec(
        "svhn",
        (32, 32, 3),
        _blocks((5, (128, 96, 64)), (5, (320, 256, 128)), (5, (384, 256, 10))),
        ("max", "max"),
    ),
    "mnist": NINSpec(
        "mnist",
        (28, 28, 1),
        _blocks((5, (96, 64, 48)), (5, (128, 96, 48)), (5, (128, 96, 10))),
        ("max", "max"),
    ),
    # Not from the paper: a two-block NIN for scikit-learn's 8x8 digits (8 -> 4 -> GAP).
    "digits": NINSpec(
        "digits",
        (8, 8, 1),
        _blocks((3, (64, 64, 64)), (3, (128, 128, 10))),
        ("max",),
    ),
}

HEADS = ("gap", "fc", "fc_dropout")


class NIN(nnx.Module):
    """Network In Network: mlpconv blocks, 3x3/2 pools with dropout, and a pooling head.

    Heads:

    - "gap" (the paper): the last block has one map per class, global average pooling gives the
      logits; the head adds no parameters.
    - "fc": the paper's Table 5 ablation: the same network with GAP replaced by a fully
      connected layer on the flattened class maps.
    - "fc_dropout": the same with dropout (``spec.dropout``) before the fully connected layer.
    - any global pool: a module or function mapping the class maps ``(batch, h, w, classes)`` to
      ``(batch, classes)``, e.g. ``gapjax.nn.GeMPool(channels=10)``, ``gapjax.nn.GWAP(10, ...)``,
      ``functools.partial(gapjax.topk_pool, k=0.2)``.

    Args:
      spec: the architecture (see ``SPECS``).
      head: "gap", "fc", "fc_dropout", or a pooling module or function.
      init: "spec" (the architecture's normal initialization: the paper's) or "he" (He et al.'s
        fan-in normal, which does not sit at chance; a deviation from the paper).
      dtype: computation dtype of the convolutions (e.g. ``jnp.bfloat16``); parameters stay
        float32.
      rngs: random streams: "params" for the initializers, "dropout" for dropout.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> model = nin.nin_digits(rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> logits, extra = model(jnp.zeros((2, 8, 8, 1)), return_intermediates=True)
      >>> logits.shape, extra["maps"].shape, extra["pooled"].shape
      ((2, 10), (2, 4, 4, 10), (2, 10))

    References:
      Lin, Chen, Yan, "Network In Network", ICLR 2014, arXiv:1312.4400.
    """

    def __init__(
        self,
        spec: NINSpec,
        *,
        head: str | Callable = "gap",
        init: str = "spec",
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if init not in ("spec", "he"):
            raise ValueError(f"NIN: init must be 'spec' or 'he', got {init!r}.")
        rate = spec.dropout
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(
                f"NIN: spec.dropout (the dropout rate) must lie in [0, 1), got {rate!r} "
                f"(spec {spec.name!r})."
            )
        if len(spec.pools) != len(spec.blocks) - 1 or any(
            p not in ("max", "avg") for p in spec.pools
        ):
            raise ValueError(
                f"NIN: spec {spec.name!r} needs one pool ('max' or 'avg') between each pair of "
                f"blocks; got {len(spec.blocks)} blocks and pools {spec.pools!r}."
            )
        if isinstance(head, str) and head not in HEADS:
            raise ValueError(f"NIN: head must be one of {HEADS} or a pooling module, got {head!r}.")
        self.spec = spec
        widths = [spec.input_shape[-1]] + [b.features[-1] for b in spec.blocks]
        self.blocks = nnx.List(
            [
                nn.MLPConv(
                    widths[i],
                    block.features,
                    kernel_size=block.kernel_size,
                    kernel_init=[
                        nnx.initializers.he_normal() if init == "he" else nnx.initializers.normal(s)
                        for s in block.stds()
                    ],
                    dtype=dtype,
                    rngs=rngs,
                )
                for i, block in enumerate(spec.blocks)
            ]
        )
        self.pools = nnx.List(
            [
                (nn.MaxPool if kind == "max" else nn.AvgPool)(3, stride=2, convention="caffe")
                for kind in spec.pools
            ]
        )
        self.dropouts = nnx.List([nnx.Dropout(spec.dropout, rngs=rngs) for _ in spec.pools])
        self.head_kind = head if isinstance(head, str) else "pool"
        if head in ("fc", "fc_dropout"):
            side = spec.spatial_sizes()[-1]
            flat = side * side * spec.num_classes
            self.fc = nnx.Linear(
                flat,
                spec.num_classes,
                kernel_init=nnx.initializers.normal(0.05),
                dtype=dtype,
                rngs=rngs,
            )
            self.fc_dropout = nnx.Dropout(spec.dropout if head == "fc_dropout" else 0.0, rngs=rngs)
        elif not isinstance(head, str):
            self.pool = head

    def last_layer_path(self) -> tuple[str | int, ...]:
        """Where the layer that produces the logits sits in the state (for its lr multiplier).

        Returns:
          ``("fc",)`` for the fully connected heads, else the last 1x1 convolution's path,
          e.g. ``("blocks", 2, "layers", 2)`` (cccp6 on CIFAR-10).

        Example:
          >>> from flax import nnx
          >>> from gapjax.models import nin
          >>> nin.nin_digits(rngs=nnx.Rngs(0)).last_layer_path()
          ('blocks', 1, 'layers', 2)
        """
        if self.head_kind in ("fc", "fc_dropout"):
            return ("fc",)
        return ("blocks", len(self.blocks) - 1, "layers", len(self.blocks[-1].layers) - 1)

    def features(self, x: Shaped[ArrayLike, "batch height width channels"]) -> Float[Array, "..."]:
        """The class confidence maps: every block, up to the last ReLU before the head.

        Returns:
          ``(batch, h, w, classes)``, e.g. ``(batch, 8, 8, 10)`` on CIFAR-10.
        """
        return self._forward(x, [])

    def head(self, maps: Float[ArrayLike, "batch h w classes"]) -> Float[Array, "batch classes"]:
        """The head alone: class maps to logits.

        Returns:
          ``(batch, classes)``.
        """
        return self._head(jnp.asarray(maps))[0]

    def __call__(
        self,
        x: Shaped[ArrayLike, "batch height width channels"],
        *,
        return_intermediates: bool = False,
    ) -> Any:
        """Classifies a batch of channels-last images.

        Returns:
          The logits ``(batch, classes)`` in float32; with ``return_intermediates``, also a dict
          with "blocks" (each block's output, before its pool), "maps" (the class confidence
          maps before the head) and "pooled" (the head's input vector: the GAP of the maps, or
          the flattened maps for the fully connected heads).
        """
        blocks: list[jax.Array] = []
        maps = self._forward(x, blocks)
        logits, pooled = self._head(maps)
        logits = logits.astype(jnp.float32)
        if return_intermediates:
            return logits, {"blocks": tuple(blocks), "maps": maps, "pooled": pooled}
        return logits

    def _forward(self, x: Any, blocks: list) -> jax.Array:
        x = jnp.asarray(x)
        expected = self.spec.input_shape
        if x.ndim != 4 or x.shape[-1] != expected[-1]:
            raise ValueError(
                f"NIN ({self.spec.name}): x must be (batch, height, width, {expected[-1]}) "
                f"images, channels last; got shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        for i, block in enumerate(self.blocks):
            x = block(x)
            blocks.append(x)
            if i < len(self.pools):
                x = self.dropouts[i](self.pools[i](x))
        return x

    def _head(self, maps: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.head_kind == "gap":
            pooled = pooling.global_avg_pool(maps)
            return pooled, pooled
        if self.head_kind == "pool":
            pooled = self.pool(maps)
            return pooled, pooled
        side = self.spec.spatial_sizes()[-1]
        if maps.shape[1:3] != (side, side):
            raise ValueError(
                f"NIN ({self.spec.name}): the fully connected head was built for {side}x{side} "
                f"maps (inputs of {self.spec.input_shape}); got maps of shape {maps.shape}."
            )
        pooled = maps.reshape(maps.shape[0], -1)
        return self.fc(self.fc_dropout(pooled)), pooled


def nin(
    name: str,
    *,
    head: str | Callable = "gap",
    init: str = "spec",
    dtype: Any = None,
    rngs: nnx.Rngs,
) -> NIN:
    """Builds a NIN from ``SPECS`` by name.

    Args:
      name: "cifar10", "cifar10_caffe" (the Model Zoo version: average second pool),
        "cifar100", "svhn", "mnist" or "digits" (a small NIN for 8x8 inputs).
      head: see ``NIN``.
      init: "spec" (the paper's) or "he"; see ``NIN``.
      dtype: computation dtype of the convolutions.
      rngs: random streams.

    Returns:
      The model.

    Example:
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> model = nin.nin("mnist", rngs=nnx.Rngs(0))
      >>> nin.param_count(model)
      349674
    """
    if name not in SPECS:
        raise ValueError(f"nin: unknown architecture {name!r}; choose one of {sorted(SPECS)}.")
    return NIN(SPECS[name], head=head, init=init, dtype=dtype, rngs=rngs)


def _factory(name: str, summary: str) -> Callable:
    def build(
        *, head: str | Callable = "gap", init: str = "spec", dtype: Any = None, rngs: nnx.Rngs
    ) -> NIN:
        return nin(name, head=head, init=init, dtype=dtype, rngs=rngs)

    build.__name__ = build.__qualname__ = f"nin_{name}"
    build.__doc__ = f"""{summary}

    Args:
      head: "gap" (the paper), "fc", "fc_dropout", or a pooling module or function.
      init: "spec" (the paper's normal init) or "he".
      dtype: computation dtype of the convolutions.
      rngs: random streams ("params", "dropout").

    Returns:
      ``NIN(SPECS[{name!r}], ...)``.

    Example:
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> nin.nin_{name}(rngs=nnx.Rngs(0)).spec.input_shape
      {SPECS[name].input_shape}
    """
    return build


nin_cifar10 = _factory("cifar10", "NIN for CIFAR-10 (966,986 parameters; paper: 10.41% error).")
nin_cifar10_caffe = _factory(
    "cifar10_caffe", "NIN for CIFAR-10 as in the Caffe Model Zoo: the second pool averages."
)
nin_cifar100 = _factory("cifar100", "NIN for CIFAR-100 (984,356 parameters; paper: 35.68%).")
nin_svhn = _factory("svhn", "NIN for SVHN (1,986,026 parameters; paper: 2.35% error).")
nin_mnist = _factory("mnist", "NIN for MNIST, 28x28x1 (349,674 parameters; paper: 0.47%).")
nin_digits = _factory("digits", "A small two-block NIN for scikit-learn's 8x8 digits.")


def param_count(model: nnx.Module) -> int:
    """The number of parameters (``nnx.Param`` entries) of a model.

    Returns:
      An int.

    Example:
      >>> from flax import nnx
      >>> from gapjax.models import nin
      >>> nin.param_count(nnx.eval_shape(lambda: nin.nin_cifar10(rngs=nnx.Rngs(0))))
      966986
    """
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
