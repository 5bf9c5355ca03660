"""Private file helpers shared by the readers, the downloader and the cache.

Checksums, the table of official dataset files, and atomic writes. Every error names the file.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One official dataset file: where it comes from and what it must hash to.

    Attributes:
      name: the file name, as published (e.g. ``"cifar-10-python.tar.gz"``).
      url: the official download address.
      size: its length in bytes.
      sha256: its SHA-256, lowercase hex.
      md5: its MD5 as published by the dataset's authors (informational; SHA-256 is checked).
    """

    name: str
    url: str
    size: int
    sha256: str
    md5: str

    def describe(self, path: str | os.PathLike) -> str:
        """A sentence saying which file to place where, for error messages."""
        source = f"Download {self.url}" if self.url else f"Copy the original {self.name}"
        return f"{source} and place it at {Path(path)} ({self.size:,} bytes, sha256 {self.sha256})."


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# REFERENCE.md section 4.
OFFICIAL_FILES: MappingProxyType = MappingProxyType(
    {
        f.name: f
        for f in (
            RemoteFile(
                "cifar-10-python.tar.gz",
                _KRIZ + "cifar-10-python.tar.gz",
                170_498_071,
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                "c58f30108f718f92721af3b95e74349a",
            ),
            RemoteFile(
                "cifar-100-python.tar.gz",
                _KRIZ + "cifar-100-python.tar.gz",
                169_001_437,
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                "eb9058c3a382ffc7106e4002c42a8d85",
            ),
            RemoteFile(
                "train_32x32.mat",
                _SVHN + "train_32x32.mat",
                182_040_794,
                "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
            ),
            RemoteFile(
                "test_32x32.mat",
                _SVHN + "test_32x32.mat",
                64_275_384,
                "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                "eb5a983be6a315427106f1b164d9cef3",
            ),
            RemoteFile(
                "extra_32x32.mat",
                _SVHN + "extra_32x32.mat",
                1_329_278_602,
                "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3",
                "a93ce644f1a588dc4d68dda5feec44a7",
            ),
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                _MNIST + "train-images-idx3-ubyte.gz",
                9_912_422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                _MNIST + "train-labels-idx1-ubyte.gz",
                28_881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                _MNIST + "t10k-images-idx3-ubyte.gz",
                1_648_877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                _MNIST + "t10k-labels-idx1-ubyte.gz",
                4_542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        )
    }
)

# The JPEG copy of CIFAR-10 shipped beside the project (/work/shared/data/README.md).
CIFAR10_JPEG = RemoteFile(
    "cifar10-jpeg.tar.gz",
    "",  # not downloadable: it ships with the project's shared data
    19_758_569,
    "3aee566dde2b7c94db9bc539afcc29dba4217a42de87e426dbc1e588cde582f4",
    "",
)


def sha256sum(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """Raises FileNotFoundError naming ``path`` unless it is an existing file."""
    if not path.is_file():
        extra = f" {hint}" if hint else ""
        raise FileNotFoundError(f"{what}: no file at {path}.{extra}")
    return path


def verify_file(path: Path, expected: RemoteFile) -> None:
    """Checks size, then SHA-256, of ``path`` against ``expected``; ValueError naming the file."""
    require_file(path, expected.name, expected.describe(path))
    size = path.stat().st_size
    if size != expected.size:
        raise ValueError(
            f"{path}: {size:,} bytes where the official {expected.name} has "
            f"{expected.size:,} (truncated or not the official file). {expected.describe(path)}"
        )
    digest = sha256sum(path)
    if digest != expected.sha256:
        raise ValueError(
            f"{path}: sha256 {digest} does not match the official {expected.name} "
            f"({expected.sha256}); the file is corrupt or not the official one. "
            f"{expected.describe(path)}"
        )


def read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when it starts with the gzip magic; errors name the file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e}).") from None


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: str = "wb") -> Iterator:
    """Writes to a temporary file beside ``path``, then renames it over ``path`` on success.

    A failure (any exception) leaves ``path`` as it was and removes the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def optional_import(module: str, *, fn: str) -> Any:
    """Imports an optional dependency, or raises ImportError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f'{fn} needs {module.split(".")[0]}, which is not installed: pip install "gapjax[data]"'
        ) from e
