"""The paper's augmented recipe on the CIFAR-10 JPEG copy in ../shared/data.

Command::

    python -m experiments.train --config configs/nin_cifar10_jpeg_aug.py \
        --workdir runs/nin_cifar10_jpeg_aug

Expected: near the paper's 8.81% test error (JPEG copy: slightly worse). Runtime: as nin_cifar10.
"""

from configs.nin_cifar10_jpeg import get_config as jpeg


def get_config():
    c = jpeg()
    c.name = "nin_cifar10_jpeg_aug"
    c.augment = True
    return c
