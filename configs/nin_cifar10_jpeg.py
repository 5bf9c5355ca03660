"""The paper's recipe on the CIFAR-10 JPEG copy shipped in ../shared/data (no download).

Command (from the repository root, with ../shared beside it)::

    python -m experiments.train --config configs/nin_cifar10_jpeg.py --workdir runs/nin_cifar10_jpeg

Expected: near the paper's 10.41% test error; JPEG at quality 75 is lossy, so report the result
as "CIFAR-10 (JPEG copy)". Runtime: as nin_cifar10. ``--config.data_dir`` points elsewhere.
"""

from configs.nin_cifar10 import get_config as paper


def get_config():
    c = paper()
    c.name = "nin_cifar10_jpeg"
    c.dataset = "cifar10_jpeg"
    c.data_dir = "../shared/data/cifar10-jpeg.tar.gz"
    c.cache_dir = "data/cache"
    return c
