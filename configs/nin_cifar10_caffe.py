"""The Caffe Model Zoo NIN on CIFAR-10: average second pool, 120k iterations, one step at 100k.

Command::

    python -m experiments.train --config configs/nin_cifar10_caffe.py \
        --workdir runs/nin_cifar10_caffe

Expected: 89.6% test accuracy (the Model Zoo's report). 120,000 iterations of batch 128 are
307 epochs of 50,000 images; the step at 100,000 iterations is epoch 256. Runtime: as
nin_cifar10, scaled by 307/260.
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_cifar10_caffe"
    c.model = "cifar10_caffe"
    c.epochs = 307
    c.lr_boundaries = (256,)
    return c
