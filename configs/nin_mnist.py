"""NIN on MNIST (28x28x1): 28 -> 14 -> 7, a 7x7 GAP.

Command (the four official IDX files in ``data/``)::

    python -m experiments.train --config configs/nin_mnist.py --workdir runs/nin_mnist

Expected: 0.47% test error (the paper). Preprocessing: per-channel standardization (the paper
gives none for MNIST). Runtime: 60k images per epoch; not yet measured on a GPU.
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_mnist"
    c.dataset = "mnist"
    c.model = "mnist"
    c.preprocess = "standardize"
    c.epochs = 60
    c.lr_boundaries = (40, 50)
    return c
