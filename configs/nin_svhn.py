"""NIN on SVHN as in the paper: GCN then 7x7 local contrast normalization, no augmentation.

Command (``train_32x32.mat``, ``test_32x32.mat`` and ``extra_32x32.mat`` in ``data/``)::

    python -m experiments.train --config configs/nin_svhn.py --workdir runs/nin_svhn

Expected: 2.35% test error (the paper). As in the paper (Goodfellow et al.'s protocol), it trains
on train + extra minus 400 images per class of train and 200 per class of extra, which form the
validation set (``--config.eval_split=validation``). Runtime: 598,388 images per epoch (7.4 GB
as float32 on the device); not yet measured on a GPU.
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_svhn"
    c.dataset = "svhn"
    c.model = "svhn"
    c.preprocess = "gcn_lcn"
    c.epochs = 100
    c.lr_boundaries = (70, 85)
    return c
