"""Downloads of the official dataset files, verified and written atomically.

Every file is streamed into a temporary file beside its destination, its size and SHA-256
(REFERENCE.md section 4) are checked, and only then is it renamed into place: an interrupted or
corrupt download never leaves a file that a reader would take for the real one. Where the network
is unreachable (as on every machine of this project), the error says which file to place where,
with its URL, size and checksum.
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

from gapjax.data._files import OFFICIAL_FILES, RemoteFile, atomic_path, verify_file

__all__ = ["DATASET_FILES", "DownloadError", "RemoteFile", "download_dataset", "download_file"]

# The official files of each dataset, by the name the loaders use.
DATASET_FILES: MappingProxyType = MappingProxyType(
    {
        "cifar10": (OFFICIAL_FILES["cifar-10-python.tar.gz"],),
        "cifar100": (OFFICIAL_FILES["cifar-100-python.tar.gz"],),
        "svhn": tuple(OFFICIAL_FILES[f"{s}_32x32.mat"] for s in ("train", "test", "extra")),
        "mnist": tuple(
            OFFICIAL_FILES[f"{p}-{k}-idx{d}-ubyte.gz"]
            for p in ("train", "t10k")
            for k, d in (("images", 3), ("labels", 1))
        ),
    }
)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed (offline, refused, interrupted); the message says what to place where."""


def download_file(
    url: str,
    *,
    path: str | os.PathLike,
    size: int,
    sha256: str,
    opener: Callable | None = None,
    timeout: float = 60.0,
) -> Path:
    """Downloads ``url`` to ``path`` unless a verified copy is already there.

    The bytes go to a temporary file in ``path``'s folder while their SHA-256 is computed; the
    file is renamed to ``path`` only if its size and checksum match.

    Args:
      url: the address (``https://``, ``http://`` or ``file://``).
      path: where the file must end up.
      size: its expected length in bytes.
      sha256: its expected SHA-256 (hex).
      opener: called as ``opener(url, timeout=timeout)`` and must return a readable binary
        file-like object (a context manager); defaults to ``urllib.request.urlopen``.
      timeout: seconds to wait for the server.

    Returns:
      The path of the verified file.

    Raises:
      DownloadError: the URL could not be read (offline, HTTP error, interrupted); the message
        gives the URL, the expected path, size and checksum so that the file can be placed by hand.
      ValueError: the downloaded bytes, or a file already at ``path``, fail the size or checksum
        check (the file at ``path`` is never replaced by bad bytes).

    Example:
      >>> import hashlib, pathlib, tempfile
      >>> from gapjax.data import download_file
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (tmp / "src.bin").write_bytes(b"hello")
      >>> digest = hashlib.sha256(b"hello").hexdigest()
      >>> out = download_file((tmp / "src.bin").as_uri(), path=tmp / "dst.bin", size=5,
      ...                     sha256=digest)
      >>> out.read_bytes()
      b'hello'
    """
    path = Path(path)
    expected = RemoteFile(path.name, url, int(size), sha256.lower(), "")
    if path.exists():
        verify_file(path, expected)
        return path
    opener = urllib.request.urlopen if opener is None else opener
    try:
        with atomic_path(path) as out:
            digest = hashlib.sha256()
            received = 0
            try:
                with opener(url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        received += len(chunk)
                        if received > expected.size:
                            break
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException, urllib.error.URLError) as e:
                raise DownloadError(
                    f"Could not download {url} ({type(e).__name__}: {e}). This machine may be "
                    f"offline. {expected.describe(path)}"
                ) from e
            if received != expected.size:
                got = (
                    f"more than the {expected.size:,} bytes expected"
                    if received > expected.size
                    else f"{received:,} bytes where {expected.size:,} were expected"
                )
                raise ValueError(
                    f"{url}: received {got}; {path} was not written. {expected.describe(path)}"
                )
            if digest.hexdigest() != expected.sha256:
                raise ValueError(
                    f"{url}: the downloaded bytes have sha256 {digest.hexdigest()}, not "
                    f"{expected.sha256}; {path} was not written. {expected.describe(path)}"
                )
    except OSError as e:
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"Could not write {path} ({e}). {expected.describe(path)}") from e
    return path


def download_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike,
    files: Sequence[str] | None = None,
    opener: Callable | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Downloads the official files of a dataset into ``data_dir`` (see ``DATASET_FILES``).

    Files already present and verified are kept; each new one is verified and written atomically.

    Args:
      name: "cifar10", "cifar100", "svhn" or "mnist".
      data_dir: the folder the loaders will read (e.g. ``load_cifar10(data_dir)``).
      files: only these file names (e.g. ``["train_32x32.mat", "test_32x32.mat"]`` to skip
        SVHN's 1.3 GB extra set); all of the dataset's files by default.
      opener: as in ``download_file`` (for tests and proxies).
      timeout: seconds to wait for the server.

    Returns:
      The paths of the verified files, in ``DATASET_FILES`` order.

    Raises:
      DownloadError: offline or failed; the message names the URL, path, size and checksum.

    Example:
      >>> from gapjax.data import DATASET_FILES, download_dataset
      >>> [f.name for f in DATASET_FILES["cifar10"]]
      ['cifar-10-python.tar.gz']
      >>> download_dataset("imagenet", data_dir="data")
      Traceback (most recent call last):
      ...
      ValueError: download_dataset: unknown dataset name 'imagenet'; ...
    """
    if name not in DATASET_FILES:
        raise ValueError(
            f"download_dataset: unknown dataset name {name!r}; known: {sorted(DATASET_FILES)}."
        )
    known = {f.name: f for f in DATASET_FILES[name]}
    wanted = list(known) if files is None else list(files)
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise ValueError(
            f"download_dataset: files {unknown} are not part of {name!r} ({list(known)})."
        )
    data_dir = Path(data_dir)
    return [
        download_file(
            known[f].url,
            path=data_dir / f,
            size=known[f].size,
            sha256=known[f].sha256,
            opener=opener,
            timeout=timeout,
        )
        for f in known
        if f in wanted
    ]
