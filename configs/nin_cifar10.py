"""NIN on CIFAR-10 as in the paper: GCN + ZCA, no augmentation, 260 epochs.

Command (the official ``cifar-10-python.tar.gz`` in ``data/``)::

    python -m experiments.train --config configs/nin_cifar10.py --workdir runs/nin_cifar10

Expected: 10.41% test error (the paper); about 14% after 200 epochs, 10.7% after 230.
Runtime: 13 million training images; not yet measured on a GPU (see the README's results
table). Solver: REFERENCE.md section 3 (Caffe SGD, lr 0.1, biases x2, last layer x0.1, weight
decay 1e-4 on weights, momentum 0.9, batch 128; lr / 10 at epochs 200 and 230).
"""

from gapjax.train import default_config


def get_config():
    c = default_config()
    c.name = "nin_cifar10"
    c.dataset = "cifar10"
    c.data_dir = "data"
    c.model = "cifar10"
    c.preprocess = "gcn_zca"
    c.init = "spec"
    c.batch_size = 128
    c.lr = 0.1
    c.bias_lr_mult = 2.0
    c.last_layer_lr_mult = 0.1
    c.weight_decay = 1e-4
    c.momentum = 0.9
    c.epochs = 260
    c.lr_boundaries = (200, 230)
    c.lr_decay = 0.1
    c.warmup_epochs = 0
    c.checkpoint_every = 5
    c.eval_every = 5
    return c
