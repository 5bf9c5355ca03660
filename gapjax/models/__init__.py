"""Model families built from ``gapjax.nn``: one file per family (``gapjax.models.nin``)."""

from gapjax.models import nin
from gapjax.models.nin import (
    NIN,
    nin_cifar10,
    nin_cifar10_caffe,
    nin_cifar100,
    nin_digits,
    nin_mnist,
    nin_svhn,
)

__all__ = [
    "NIN",
    "nin",
    "nin_cifar10",
    "nin_cifar10_caffe",
    "nin_cifar100",
    "nin_digits",
    "nin_mnist",
    "nin_svhn",
]
