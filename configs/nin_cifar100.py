"""NIN on CIFAR-100 as in the paper: GCN + ZCA, lr 0.02, weight decay 5e-4.

Command (the official ``cifar-100-python.tar.gz`` in ``data/``)::

    python -m experiments.train --config configs/nin_cifar100.py --workdir runs/nin_cifar100

Expected: 35.68% test error (the paper). The initialization uses std 0.001 for conv1 and 0.01
for cccp1-2 (the model spec), the last layer the same rate as the others. Runtime: as
nin_cifar10.
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_cifar100"
    c.dataset = "cifar100"
    c.model = "cifar100"
    c.lr = 0.02
    c.last_layer_lr_mult = 1.0
    c.weight_decay = 5e-4
    return c
