"""NIN on SVHN as in the paper: GCN then 7x7 local contrast normalization, no augmentation.

Command (``train_32x32.mat`` and ``test_32x32.mat`` in ``data/``)::

    python -m experiments.train --config configs/nin_svhn.py --workdir runs/nin_svhn

Expected: 2.35% test error (the paper, which also trained on "extra": 400 per class of train and
200 of extra are its validation set, ``--config.eval_split=validation``). Runtime: about 73k
images per epoch; not yet measured on a GPU.
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
