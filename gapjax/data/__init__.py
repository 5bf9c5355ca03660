"""Datasets, the paper's preprocessing and on-device augmentation.

- Readers (host, NumPy): ``load_cifar10``, ``load_cifar100``, ``load_svhn``, ``load_mnist``,
  ``load_digits`` (bundled with scikit-learn: no download), ``load_image_folder``,
  ``load_cifar10_jpeg``; each returns ``Split`` objects (uint8 NHWC images 0..255, int32
  labels). Official files are checksummed; errors name the file. ``cache_dir`` keeps decoded
  arrays for fast reloads.
- ``download_dataset`` / ``download_file``: verified, atomic downloads of the official files.
- Validation splits of the paper: ``holdout_last`` (CIFAR), ``svhn_validation_split``.
- Preprocessing (device, jittable; fits on the host in float64): ``global_contrast_normalize``,
  ``fit_zca`` / ``zca_whiten``, ``local_contrast_normalize``, ``fit_channel_stats`` /
  ``standardize``.
- Augmentation (device, jittable): ``random_crop_flip`` and its parts.
- Pipelines: ``DeviceDataset`` (whole dataset on the device), ``host_batches`` +
  ``prefetch_to_device`` (streaming); optional mesh sharding of the batch.

Optional dependencies (Pillow, SciPy, scikit-learn) are imported only by the readers that need
them: ``pip install "gapjax[data]"``.
"""

from gapjax.data import (
    augment,
    cache,
    download,
    image_folder,
    pipeline,
    preprocess,
    readers,
    splits,
)
from gapjax.data.augment import *  # noqa: F403
from gapjax.data.cache import *  # noqa: F403
from gapjax.data.download import *  # noqa: F403
from gapjax.data.image_folder import *  # noqa: F403
from gapjax.data.pipeline import *  # noqa: F403
from gapjax.data.preprocess import *  # noqa: F403
from gapjax.data.readers import *  # noqa: F403
from gapjax.data.splits import *  # noqa: F403

__all__ = [
    *splits.__all__,
    *readers.__all__,
    *image_folder.__all__,
    *download.__all__,
    *cache.__all__,
    *preprocess.__all__,
    *augment.__all__,
    *pipeline.__all__,
]
