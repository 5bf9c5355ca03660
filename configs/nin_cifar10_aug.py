"""NIN on CIFAR-10 with the paper's augmentation: zero-pad 4, random 32x32 crop, flip.

Command::

    python -m experiments.train --config configs/nin_cifar10_aug.py --workdir runs/nin_cifar10_aug

Expected: 8.81% test error (the paper). Runtime: as nin_cifar10 (augmentation runs on the
device inside the jitted step).
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_cifar10_aug"
    c.augment = True
    c.augment_padding = 4
    c.augment_flip = True
    return c
