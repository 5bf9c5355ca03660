"""Readers of CIFAR-10/100, SVHN, MNIST and scikit-learn's digits, from the official files.

Every reader returns host (NumPy) arrays in one convention: uint8 images
``(n, height, width, channels)`` (NHWC) with values 0..255 and int32 labels, bundled as a
``Split``; the ``load_*`` functions return a dict of Splits by name ("train", "test", ...).
Official files are checked against REFERENCE.md's SHA-256 before they are parsed (files that
carry an official name; ``verify=False`` skips it), CIFAR's pickles are read by an unpickler that
can build only arrays, lists and strings, and every malformed, truncated or missing file raises
an error naming it: nothing is skipped or half-loaded. Pass ``cache_dir`` to keep the decoded
arrays as ``.npy`` files for fast reloads (see ``cached_splits``).

SciPy (SVHN) and scikit-learn (digits) are imported only by the functions that need them:
``pip install "gapjax[data]"``.
"""

import dataclasses
import importlib.util
import math
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Int32, UInt8

from gapjax.data._checks import check_int
from gapjax.data._files import (
    OFFICIAL_FILES,
    optional_import,
    read_maybe_gzip,
    require_file,
    verify_file,
)
from gapjax.data._unpickle import load_restricted_pickle
from gapjax.data.cache import cached_splits
from gapjax.data.splits import Split

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_mnist",
    "load_svhn",
    "read_idx_images",
    "read_idx_labels",
    "read_svhn_mat",
]

PathLike = str | os.PathLike
_DIGITS = tuple(str(d) for d in range(10))
_VERSION = "1"


def _name(base: str, verify: bool) -> str:
    """The cache entry's name: an entry built without verification never serves a verified load."""
    return base if verify else f"{base}-unverified"


# ------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
    """Where one CIFAR version keeps its files (inside its archive or extracted folder)."""

    folder: str
    archive: str
    kind: str  # "python" or "binary"
    splits: tuple[tuple[str, tuple[str, ...]], ...]
    meta: tuple[str, ...]


_CIFAR10 = (
    _CifarLayout(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        "python",
        (("train", tuple(f"data_batch_{i}" for i in range(1, 6))), ("test", ("test_batch",))),
        ("batches.meta",),
    ),
    _CifarLayout(
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
        "binary",
        (
            ("train", tuple(f"data_batch_{i}.bin" for i in range(1, 6))),
            ("test", ("test_batch.bin",)),
        ),
        ("batches.meta.txt",),
    ),
)
_CIFAR100 = (
    _CifarLayout(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        "python",
        (("train", ("train",)), ("test", ("test",))),
        ("meta",),
    ),
    _CifarLayout(
        "cifar-100-binary",
        "cifar-100-binary.tar.gz",
        "binary",
        (("train", ("train.bin",)), ("test", ("test.bin",))),
        ("coarse_label_names.txt", "fine_label_names.txt"),
    ),
)


def _member_names(layout: _CifarLayout) -> list[str]:
    return [f for _, files in layout.splits for f in files] + list(layout.meta)


def _read_tar_members(archive: Path, layouts: Sequence[_CifarLayout]) -> tuple[Any, dict]:
    """One pass over the archive: the layout found and its members' bytes."""
    wanted = {f"{lay.folder}/{f}": lay for lay in layouts for f in _member_names(lay)}
    found: dict[str, bytes] = {}
    layout = None
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                name = m.name.removeprefix("./")
                if name in wanted and m.isfile():
                    layout = layout or wanted[name]
                    if wanted[name] is layout:
                        found[name.split("/", 1)[1]] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e})."
        ) from None
    if layout is None:
        folders = " or ".join(f"{lay.folder}/" for lay in layouts)
        raise ValueError(f"{archive}: the archive has no {folders} with the expected files.")
    missing = [f for f in _member_names(layout) if f not in found]
    if missing:
        raise ValueError(f"{archive}: missing {[f'{layout.folder}/{f}' for f in missing]}.")
    return layout, found


def _locate_cifar(path: Path, layouts: Sequence[_CifarLayout], dataset: str) -> tuple[Path, Any]:
    """The archive (layout None) or extracted folder (with its layout) that ``path`` names."""
    if path.is_file():
        return path, None
    if path.is_dir():
        for lay in layouts:
            if path.name == lay.folder or (path / _member_names(lay)[0]).is_file():
                return path, lay
        for lay in layouts:
            if (path / lay.archive).is_file():
                return path / lay.archive, None
            if (path / lay.folder).is_dir():
                return path / lay.folder, lay
    official = OFFICIAL_FILES[layouts[0].archive]
    raise FileNotFoundError(
        f"{dataset}: found neither {layouts[0].archive} nor an extracted {layouts[0].folder}/ "
        f"(or the binary version) at {path}. {official.describe(path / official.name)} "
        f"Or call gapjax.data.download_dataset({dataset.lower().replace('-', '')!r}, "
        f"data_dir=...) on a machine with internet access."
    )


def _read_cifar_files(source: Path, layout, verify: bool) -> tuple[_CifarLayout, dict, str]:
    """The bytes of every file of the layout, and how to name them in messages."""
    if layout is None:  # an archive
        official = OFFICIAL_FILES.get(source.name)
        if verify and official is not None:
            verify_file(source, official)
        layout, files = _read_tar_members(source, _CIFAR10 + _CIFAR100)
        return layout, files, f"{source}:{layout.folder}/"
    files = {}
    for f in _member_names(layout):
        p = require_file(source / f, f"{layout.folder}")
        files[f] = p.read_bytes()
    return layout, files, f"{source}/"


def _labels_array(values: Any, source: str, key: str, n: int, num_classes: int) -> np.ndarray:
    try:
        labels = np.asarray(values)
    except Exception as e:
        raise ValueError(f"{source}: {key} is not a list of ints ({e}).") from None
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{source}: {key} must be {n} ints, got {labels.dtype}{list(labels.shape)}."
        )
    if n and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(
            f"{source}: {key} span [{labels.min()}, {labels.max()}], outside [0, {num_classes})."
        )
    return labels.astype(np.int32)


def _cifar_python_batch(data: bytes, source: str, label_key: bytes, num_classes: int):
    obj = load_restricted_pickle(data, source=source)
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{source}: expected a dict with b'data' and {label_key!r}, got {keys}.")
    x = obj[b"data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(
            f"{source}: b'data' must be uint8 (n, 3072), got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')}{list(getattr(x, 'shape', ()))}."
        )
    labels = _labels_array(obj[label_key], source, label_key.decode(), len(x), num_classes)
    # 1024 red values, then green, then blue, each 32x32 row-major: (n, 3, 32, 32) -> NHWC.
    images = np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _cifar_binary_batch(
    data: bytes, source: str, *, label_bytes: int, label_col: int, num_classes: int
):
    """Records of ``<label bytes><3072 pixel bytes>``; the label is byte ``label_col``."""
    record = label_bytes + 3072
    if len(data) == 0 or len(data) % record:
        raise ValueError(
            f"{source}: {len(data):,} bytes is not a whole number of {record}-byte records "
            "(truncated or not a CIFAR binary file)."
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    labels = _labels_array(rows[:, label_col], source, "labels", len(rows), num_classes)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels


def _names(values: Any, source: str, key: str, count: int) -> tuple[str, ...]:
    if not isinstance(values, list | tuple) or len(values) != count:
        raise ValueError(f"{source}: {key} must list {count} class names.")
    try:
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: {key} holds a class name that is not UTF-8 ({e}).") from None


def _load_cifar(
    path: PathLike, *, layouts, dataset: str, coarse: bool, verify: bool
) -> dict[str, Split]:
    source, layout = _locate_cifar(Path(path), layouts, dataset)
    layout, files, where = _read_cifar_files(source, layout, verify)
    if layout not in layouts:
        raise ValueError(f"{source}: this is not {dataset} (found {layout.folder}/).")
    cifar100 = layouts is _CIFAR100
    num_classes = 20 if coarse else (100 if cifar100 else 10)
    # Class names.
    if layout.kind == "python":
        meta = load_restricted_pickle(files[layout.meta[0]], source=where + layout.meta[0])
        key = (b"coarse_label_names" if coarse else b"fine_label_names") if cifar100 else None
        key = key or b"label_names"
        if not isinstance(meta, dict) or key not in meta:
            raise ValueError(f"{where}{layout.meta[0]}: no {key!r} in the meta file.")
        names = _names(meta[key], where + layout.meta[0], key.decode(), num_classes)
    else:
        # batches.meta.txt (CIFAR-10), or coarse_label_names.txt / fine_label_names.txt.
        meta_file = layout.meta[0] if coarse or not cifar100 else layout.meta[-1]
        lines = files[meta_file].decode("utf-8", "replace").split("\n")
        names = _names(
            [x.strip() for x in lines if x.strip()], where + meta_file, "names", num_classes
        )
    out = {}
    for split, members in layout.splits:
        parts = []
        for m in members:
            if layout.kind == "python":
                key = (b"coarse_labels" if coarse else b"fine_labels") if cifar100 else b"labels"
                parts.append(_cifar_python_batch(files[m], where + m, key, num_classes))
            else:
                # CIFAR-10: <label>; CIFAR-100: <coarse><fine>.
                parts.append(
                    _cifar_binary_batch(
                        files[m],
                        where + m,
                        label_bytes=2 if cifar100 else 1,
                        label_col=1 if cifar100 and not coarse else 0,
                        num_classes=num_classes,
                    )
                )
        out[split] = Split(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), names
        )
    return out


def load_cifar10(
    path: PathLike, *, verify: bool = True, cache_dir: PathLike | None = None
) -> dict[str, Split]:
    """Reads CIFAR-10 (50,000 train and 10,000 test 32x32 RGB images, 10 classes).

    ``path`` is the official archive (``cifar-10-python.tar.gz``, or ``cifar-10-binary.tar.gz``
    for the binary version), the extracted folder (``cifar-10-batches-py/`` or
    ``cifar-10-batches-bin/``), or a folder holding one of them. The archive is read in memory
    (never extracted); an archive named like the official one is checked against its SHA-256
    first. The python batches are unpickled with a restricted unpickler.

    Args:
      path: the archive, or a folder (see above).
      verify: check the official archive's size and SHA-256 before reading it.
      cache_dir: keep the decoded arrays there for fast reloads (``cached_splits``).

    Returns:
      ``{"train": Split, "test": Split}``; images uint8 (n, 32, 32, 3), labels 0..9 in
      ``batches.meta`` order (airplane, automobile, ..., truck).

    Raises:
      FileNotFoundError: nothing at ``path``; the message gives the URL, size and checksum.
      ValueError: a wrong checksum, a missing, truncated or malformed file (named).

    Example:
      >>> from gapjax.data import load_cifar10
      >>> load_cifar10("no/such/dir")
      Traceback (most recent call last):
      ...
      FileNotFoundError: CIFAR-10: found neither cifar-10-python.tar.gz nor ... at no/such/dir...
      >>> data = load_cifar10("data/")  # doctest: +SKIP
      >>> data["train"]  # doctest: +SKIP
      Split(images=uint8[50000, 32, 32, 3], labels=int32[50000], classes=10)
    """

    def build():
        return _load_cifar(path, layouts=_CIFAR10, dataset="CIFAR-10", coarse=False, verify=verify)

    if cache_dir is None:
        return build()
    source, _ = _locate_cifar(Path(path), _CIFAR10, "CIFAR-10")
    return cached_splits(
        source, cache_dir=cache_dir, name=_name("cifar10", verify), build=build, version=_VERSION
    )


def load_cifar100(
    path: PathLike,
    *,
    labels: str = "fine",
    verify: bool = True,
    cache_dir: PathLike | None = None,
) -> dict[str, Split]:
    """Reads CIFAR-100 (50,000 train and 10,000 test 32x32 RGB images, 100 or 20 classes).

    ``path`` is ``cifar-100-python.tar.gz`` (or ``cifar-100-binary.tar.gz``), the extracted
    ``cifar-100-python/`` (or ``cifar-100-binary/``) folder, or a folder holding one of them; as
    in ``load_cifar10``, the official archive is checksummed and the pickles read safely.

    Args:
      path: the archive, or a folder.
      labels: "fine" (100 classes, the paper's task) or "coarse" (20 superclasses).
      verify: check the official archive's size and SHA-256 before reading it.
      cache_dir: keep the decoded arrays there for fast reloads.

    Returns:
      ``{"train": Split, "test": Split}``; images uint8 (n, 32, 32, 3), the chosen labels with
      their class names from the meta file.

    Example:
      >>> from gapjax.data import load_cifar100
      >>> load_cifar100("data/", labels="medium")
      Traceback (most recent call last):
      ...
      ValueError: load_cifar100: labels='medium' must be "fine" or "coarse".
      >>> load_cifar100("data/")["train"]  # doctest: +SKIP
      Split(images=uint8[50000, 32, 32, 3], labels=int32[50000], classes=100)
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f'load_cifar100: labels={labels!r} must be "fine" or "coarse".')
    coarse = labels == "coarse"

    def build():
        return _load_cifar(
            path, layouts=_CIFAR100, dataset="CIFAR-100", coarse=coarse, verify=verify
        )

    if cache_dir is None:
        return build()
    source, _ = _locate_cifar(Path(path), _CIFAR100, "CIFAR-100")
    return cached_splits(
        source,
        cache_dir=cache_dir,
        name=_name(f"cifar100-{labels}", verify),
        build=build,
        version=_VERSION,
    )


# ------------------------------------------------------------------------------------------
# SVHN (cropped digits, format 2)
# ------------------------------------------------------------------------------------------


def read_svhn_mat(file: PathLike, *, verify: bool = True) -> Split:
    """Reads one SVHN cropped-digits file (``train_32x32.mat``, ``test_32x32.mat``, ``extra``).

    The MATLAB file holds ``X``, uint8 (32, 32, 3, n), and ``y``, (n, 1) labels 1..10 where 10
    is the digit 0. The labels returned are the digits themselves (10 becomes 0).

    Args:
      file: the .mat file (MATLAB v5, read with ``scipy.io.loadmat``).
      verify: check the size and SHA-256 of a file that carries an official name.

    Returns:
      A Split: images uint8 (n, 32, 32, 3), labels 0..9, class names "0".."9".

    Raises:
      FileNotFoundError: no such file (the message gives the URL, size and checksum).
      ValueError: a wrong checksum, an unreadable file, or ``X``/``y`` of the wrong shape,
        dtype or range (the message names the file).

    Example:
      >>> import numpy as np, pathlib, scipy.io, tempfile
      >>> from gapjax.data import read_svhn_mat
      >>> f = pathlib.Path(tempfile.mkdtemp()) / "tiny.mat"
      >>> x = np.zeros((32, 32, 3, 2), np.uint8)
      >>> scipy.io.savemat(f, {"X": x, "y": np.array([[10], [3]], np.uint8)})
      >>> s = read_svhn_mat(f)
      >>> s, s.labels
      (Split(images=uint8[2, 32, 32, 3], labels=int32[2], classes=10), array([0, 3], dtype=int32))
    """
    file = Path(file)
    official = OFFICIAL_FILES.get(file.name) if file.name.endswith("_32x32.mat") else None
    require_file(file, "SVHN", official.describe(file) if official else "")
    if verify and official is not None:
        verify_file(file, official)
    sio = optional_import("scipy.io", fn="read_svhn_mat")
    try:
        mat = sio.loadmat(file, variable_names=("X", "y"))
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError, ...
        raise ValueError(
            f"{file}: not a readable MATLAB v5 file (corrupt or truncated?): "
            f"{type(e).__name__}: {e}."
        ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise ValueError(f"{file}: needs variables X and y, found {sorted(mat)}.")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{file}: X must be uint8 (32, 32, 3, n), got {x.dtype}{list(x.shape)}.")
    n = x.shape[3]
    if y.shape not in ((n, 1), (n,)) or y.dtype.kind not in "iuf":
        raise ValueError(
            f"{file}: y must be ({n}, 1) labels (n from X), got {y.dtype}{list(y.shape)}."
        )
    y = y.reshape(n)
    if n and (np.any(y != np.round(y)) or y.min() < 1 or y.max() > 10):
        raise ValueError(f"{file}: y must hold the labels 1..10, found [{y.min()}, {y.max()}].")
    labels = (y.astype(np.int64) % 10).astype(np.int32)
    return Split(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels, _DIGITS)


def load_svhn(
    path: PathLike,
    *,
    splits: Sequence[str] = ("train", "test"),
    verify: bool = True,
    cache_dir: PathLike | None = None,
) -> dict[str, Split]:
    """Reads SVHN's cropped digits (73,257 train, 26,032 test, 531,131 extra; 32x32 RGB).

    Args:
      path: the folder with ``train_32x32.mat``, ``test_32x32.mat`` (and ``extra_32x32.mat``).
      splits: which of "train", "test" and "extra" to read (extra is 1.3 GB).
      verify: check each official file's size and SHA-256 before reading it.
      cache_dir: keep the decoded arrays there for fast reloads (one entry per file).

    Returns:
      ``{split: Split}`` with images uint8 (n, 32, 32, 3) and labels 0..9 (see ``read_svhn_mat``).

    Example:
      >>> from gapjax.data import load_svhn
      >>> load_svhn("data/", splits=("valid",))
      Traceback (most recent call last):
      ...
      ValueError: load_svhn: unknown splits ['valid']; choose from train, test, extra.
      >>> load_svhn("data/")["train"]  # doctest: +SKIP
      Split(images=uint8[73257, 32, 32, 3], labels=int32[73257], classes=10)
    """
    unknown = [s for s in splits if s not in ("train", "test", "extra")]
    if unknown or not splits:
        raise ValueError(f"load_svhn: unknown splits {unknown}; choose from train, test, extra.")
    out = {}
    for split in splits:
        file = Path(path) / f"{split}_32x32.mat"

        def build(file=file, split=split):
            return {split: read_svhn_mat(file, verify=verify)}

        if cache_dir is None or not file.is_file():
            out.update(build())
        else:
            out.update(
                cached_splits(
                    file,
                    cache_dir=cache_dir,
                    name=_name(f"svhn-{split}", verify),
                    build=build,
                    version=_VERSION,
                )
            )
    return out


# ------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ------------------------------------------------------------------------------------------


def _idx_header(data: bytes, file: Path, magic: int, dims: int) -> tuple[int, ...]:
    head = 4 * (1 + dims)
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else "missing"
        raise ValueError(
            f"{file}: magic number {found}, expected {magic} (IDX "
            f"{'images' if magic == 2051 else 'labels'}); wrong or corrupt file."
        )
    if len(data) < head:
        raise ValueError(f"{file}: {len(data)} bytes is too short for an IDX header.")
    shape = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, head, 4))
    expected = head + math.prod(shape)  # Python ints: a forged header cannot overflow
    if len(data) != expected:
        raise ValueError(
            f"{file}: {len(data):,} bytes, but its header {list(shape)} needs {expected:,} "
            f"({'truncated' if len(data) < expected else 'trailing bytes'})."
        )
    return shape


def read_idx_images(file: PathLike) -> UInt8[np.ndarray, "n height width 1"]:
    """Reads an IDX image file (MNIST's ``*-images-idx3-ubyte``, gzipped or not).

    Big-endian header: magic 2051, count, rows, columns; then the uint8 pixels. The magic
    number, and that the file's length equals what the header announces, are checked.

    Args:
      file: the file (``.gz`` or raw; gzip is detected from its first bytes).

    Returns:
      uint8 ``(count, rows, columns, 1)``.

    Example:
      >>> import gzip, pathlib, struct, tempfile
      >>> from gapjax.data import read_idx_images
      >>> f = pathlib.Path(tempfile.mkdtemp()) / "images.gz"
      >>> _ = f.write_bytes(gzip.compress(struct.pack(">4i", 2051, 2, 2, 3) + bytes(range(12))))
      >>> read_idx_images(f)[1, :, :, 0]
      array([[ 6,  7,  8],
             [ 9, 10, 11]], dtype=uint8)
    """
    file = require_file(Path(file), "IDX images")
    data = read_maybe_gzip(file)
    n, rows, cols = _idx_header(data, file, 2051, 3)
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols, 1).copy()


def read_idx_labels(file: PathLike) -> Int32[np.ndarray, " n"]:
    """Reads an IDX label file (MNIST's ``*-labels-idx1-ubyte``, gzipped or not).

    Big-endian header: magic 2049, count; then one uint8 label per example.

    Args:
      file: the file (``.gz`` or raw).

    Returns:
      int32 ``(count,)``.

    Example:
      >>> import pathlib, struct, tempfile
      >>> from gapjax.data import read_idx_labels
      >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels"
      >>> _ = f.write_bytes(struct.pack(">2i", 2049, 3) + bytes([7, 0, 9]))
      >>> read_idx_labels(f)
      array([7, 0, 9], dtype=int32)
    """
    file = require_file(Path(file), "IDX labels")
    data = read_maybe_gzip(file)
    _idx_header(data, file, 2049, 1)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int32)


def _mnist_file(folder: Path, stem: str) -> Path:
    """The gzipped file if present, else the raw one."""
    gz, raw = folder / f"{stem}.gz", folder / stem
    if gz.is_file():
        return gz
    if raw.is_file():
        return raw
    raise FileNotFoundError(
        f"MNIST: neither {gz} nor {raw} exists. {OFFICIAL_FILES[gz.name].describe(gz)}"
    )


def load_mnist(
    path: PathLike, *, verify: bool = True, cache_dir: PathLike | None = None
) -> dict[str, Split]:
    """Reads MNIST (60,000 train and 10,000 test 28x28 grayscale digits).

    Args:
      path: the folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``, as
        published) or not.
      verify: check the size and SHA-256 of the official ``.gz`` files.
      cache_dir: keep the decoded arrays there for fast reloads.

    Returns:
      ``{"train": Split, "test": Split}``: images uint8 (n, 28, 28, 1), labels 0..9.

    Example:
      >>> from gapjax.data import load_mnist
      >>> load_mnist("no/such/dir")
      Traceback (most recent call last):
      ...
      FileNotFoundError: MNIST: neither no/such/dir/train-images-idx3-ubyte.gz nor ...
      >>> load_mnist("data/")["test"]  # doctest: +SKIP
      Split(images=uint8[10000, 28, 28, 1], labels=int32[10000], classes=10)
    """
    folder = Path(path)
    files = {
        split: (
            _mnist_file(folder, f"{prefix}-images-idx3-ubyte"),
            _mnist_file(folder, f"{prefix}-labels-idx1-ubyte"),
        )
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }

    def build():
        out = {}
        for split, (image_file, label_file) in files.items():
            for f in (image_file, label_file):
                if verify and f.name in OFFICIAL_FILES:
                    verify_file(f, OFFICIAL_FILES[f.name])
            images, labels = read_idx_images(image_file), read_idx_labels(label_file)
            if len(images) != len(labels):
                raise ValueError(
                    f"MNIST: {image_file} has {len(images)} images but {label_file} has "
                    f"{len(labels)} labels."
                )
            if images.shape[1:] != (28, 28, 1):
                raise ValueError(f"{image_file}: images are {images.shape[1:3]}, not 28x28.")
            if len(labels) and labels.max() > 9:
                raise ValueError(f"{label_file}: labels reach {labels.max()}; MNIST has 0..9.")
            out[split] = Split(images, labels, _DIGITS)
        return out

    if cache_dir is None:
        return build()
    sources = [f for pair in files.values() for f in pair]
    return cached_splits(
        sources, cache_dir=cache_dir, name=_name("mnist", verify), build=build, version=_VERSION
    )


# ------------------------------------------------------------------------------------------
# scikit-learn's digits: the embedded default, no download
# ------------------------------------------------------------------------------------------


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits as (1797, 65) floats: 64 pixels 0..16, then the label.

    The CSV is read directly (without importing scikit-learn, which takes a second); if it has
    moved, ``sklearn.datasets.load_digits`` reads it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            return np.loadtxt(csv, delimiter=",", dtype=np.float64)
    datasets = optional_import("sklearn.datasets", fn="load_digits")
    bunch = datasets.load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


def load_digits(*, test_every: int = 5) -> dict[str, Split]:
    """scikit-learn's bundled handwritten digits, split into train and test; no download.

    1,797 grayscale 8x8 images of the digits 0-9 (the UCI "optdigits" test set), values 0..16,
    returned as uint8 scaled to 0..255 like every other reader: ``round(v * 255 / 16)`` (a
    one-to-one map; divide by 255 and multiply by 16 to get the original counts back).

    The split is fixed and stratified: within each class, in file order, every ``test_every``-th
    example (the 5th, 10th, ...) is a test example. No random numbers are involved, so it is
    the same for every scikit-learn and NumPy version: 1,442 train and 355 test images for the
    default ``test_every=5``.

    Args:
      test_every: one example in this many of each class goes to the test split.

    Returns:
      ``{"train": Split, "test": Split}``: images uint8 (n, 8, 8, 1), labels 0..9.

    Example:
      >>> from gapjax.data import load_digits
      >>> data = load_digits()
      >>> data["train"], data["test"]
      (Split(images=uint8[1442, 8, 8, 1], labels=int32[1442], classes=10),
       Split(images=uint8[355, 8, 8, 1], labels=int32[355], classes=10))
    """
    check_int(test_every, "test_every", "load_digits", minimum=2)
    table = _digits_table()
    if table.shape != (1797, 65) or np.any(table != np.round(table)) or table[:, :64].max() > 16:
        raise ValueError(
            f"load_digits: scikit-learn's digits table is {list(table.shape)} with values up to "
            f"{table[:, :64].max()}; expected (1797, 65) integers with pixels 0..16."
        )
    pixels = np.round(table[:, :64] * 255 / 16).astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = table[:, 64].astype(np.int32)
    # Rank of each example within its class, in file order.
    rank = np.empty(len(labels), np.int64)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    test = rank % test_every == test_every - 1
    return {
        "train": Split(pixels[~test], labels[~test], _DIGITS),
        "test": Split(pixels[test], labels[test], _DIGITS),
    }
