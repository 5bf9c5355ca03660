"""Small dataset files in the official formats, written independently of gapjax.data.

Every writer takes NHWC uint8 images and int labels and encodes them the way the official files
do (CIFAR rows of 1024 red, 1024 green, 1024 blue values; IDX big-endian headers; SVHN's
(32, 32, 3, n) MATLAB arrays with 10 for the digit 0), so the readers are checked against the
arrays the test started from.
"""

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np


def random_images(rng, n, h=32, w=32, c=3):
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC (n, 32, 32, 3) -> (n, 3072): the red plane, then green, then blue, row-major."""
    return np.stack([images[..., ch].reshape(len(images), 1024) for ch in range(3)], 1).reshape(
        len(images), 3072
    )


# ---- a Python-2 cPickle writer (protocol 2), emitting the opcodes the real CIFAR files use ----


def _py2(obj, out: bytearray) -> None:
    if isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for k, v in obj.items():
                _py2(k, out)
                _py2(v, out)
            out += b"u"
    elif isinstance(obj, list):
        out += b"]"
        if obj:
            out += b"("
            for v in obj:
                _py2(v, out)
            out += b"e"
    elif isinstance(obj, tuple):
        for v in obj:
            _py2(v, out)
        out += {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
    elif obj is None:
        out += b"N"
    elif obj is False:
        out += b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)
        else:
            out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, bytes):  # a Python 2 str
        if len(obj) < 256:
            out += b"U" + bytes([len(obj)]) + obj
        else:
            out += b"T" + struct.pack("<i", len(obj)) + obj
    elif isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _py2((0,), out)
        _py2(b"b", out)
        out += b"\x87R("  # TUPLE3, REDUCE, then MARK for the state tuple
        _py2(1, out)
        _py2(tuple(obj.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2((b"u1", 0, 1), out)
        out += b"R("
        for v in (3, b"|", None, None, None, -1, -1, 0):
            _py2(v, out)
        out += b"tb"  # TUPLE, BUILD (dtype state)
        out += b"\x89"  # not Fortran order
        _py2(obj.tobytes(), out)
        out += b"tb"  # TUPLE, BUILD (array state)
    else:
        raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
    """``cPickle.dumps(obj, 2)`` as Python 2 wrote it (str is bytes; arrays via _reconstruct)."""
    out = bytearray(b"\x80\x02")
    _py2(obj, out)
    return bytes(out + b".")


# ---- CIFAR ----

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def cifar10_python_files(rng, per_batch=3, n_test=4):
    """Files of ``cifar-10-batches-py/`` ({name: bytes}) and the expected (x, y) per split."""
    files, expected = {}, {}
    xs, ys = [], []
    for i in range(1, 6):
        x, y = random_images(rng, per_batch), rng.integers(0, 10, per_batch)
        files[f"data_batch_{i}"] = py2_pickle(
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": [int(v) for v in y],
                b"data": cifar_rows(x),
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            }
        )
        xs.append(x)
        ys.append(y)
    expected["train"] = (np.concatenate(xs), np.concatenate(ys))
    x, y = random_images(rng, n_test), rng.integers(0, 10, n_test)
    files["test_batch"] = py2_pickle(
        {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in y],
         b"data": cifar_rows(x)}
    )  # fmt: skip
    expected["test"] = (x, y)
    files["batches.meta"] = py2_pickle(
        {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 10000, b"num_vis": 3072}
    )
    return files, expected


def cifar10_binary_files(rng, per_batch=3, n_test=4):
    files, expected = {}, {}
    xs, ys = [], []
    for i in range(1, 7):
        n = n_test if i == 6 else per_batch
        x, y = random_images(rng, n), rng.integers(0, 10, n).astype(np.uint8)
        rows = np.concatenate([y[:, None], cifar_rows(x)], 1)
        files["test_batch.bin" if i == 6 else f"data_batch_{i}.bin"] = rows.tobytes()
        if i == 6:
            expected["test"] = (x, y)
        else:
            xs.append(x)
            ys.append(y)
    expected["train"] = (np.concatenate(xs), np.concatenate(ys))
    files["batches.meta.txt"] = b"\n".join(CIFAR10_NAMES) + b"\n\n"
    return files, expected


def cifar100_python_files(rng, n_train=5, n_test=3):
    files, expected = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        files[split] = py2_pickle(
            {
                b"filenames": [b"f.png"] * n,
                b"batch_label": split.encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": cifar_rows(x),
            }
        )
        expected[split] = (x, fine, coarse)
    files["meta"] = py2_pickle(
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
    )
    return files, expected


def cifar100_binary_files(rng, n_train=5, n_test=3):
    files, expected = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n)
        fine = rng.integers(0, 100, n).astype(np.uint8)
        coarse = rng.integers(0, 20, n).astype(np.uint8)
        rows = np.concatenate([coarse[:, None], fine[:, None], cifar_rows(x)], 1)
        files[f"{split}.bin"] = rows.tobytes()
        expected[split] = (x, fine, coarse)
    files["fine_label_names.txt"] = "\n".join(f"fine{i}" for i in range(100)).encode()
    files["coarse_label_names.txt"] = "\n".join(f"coarse{i}" for i in range(20)).encode()
    return files, expected


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_tar(
    path: Path, files: dict[str, bytes], *, mode="w:gz", folders: tuple[str, ...] | None = None
) -> Path:
    """A tar archive with the given members and folder entries: ``folders``, or those of the
    members (as real archives have)."""
    with tarfile.open(path, mode) as tf:
        if folders is None:
            folders = sorted({str(Path(n).parent) for n in files} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# ---- MNIST ----


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape[:3]
    return struct.pack(">4i", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(folder: Path, rng, *, n_train=6, n_test=4, gz=True):
    expected = {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        for stem, data in (
            (f"{prefix}-images-idx3-ubyte", idx_images(x)),
            (f"{prefix}-labels-idx1-ubyte", idx_labels(y)),
        ):
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
        expected[split] = (x[..., None], y)
    return expected
