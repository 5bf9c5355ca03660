"""An on-disk cache of decoded splits (.npy files) for fast reloads.

Decoding a dataset (gunzip and unpickle CIFAR, decode 60,000 JPEGs, parse a 1.3 GB .mat file)
takes seconds to minutes; reading the decoded arrays back from ``.npy`` files takes a fraction
of a second. An entry is keyed on the source's absolute path, size and modification time
(``mtime_ns``; for a folder, those of every file in it), the reader's name and version: any
change to the source, or a new reader version, makes a new entry and removes the old one. A hit
skips re-reading the source and so also its checksum, which was verified when the entry was
written.

Entries are written atomically (a temporary folder renamed into place, ``meta.json`` last), and
an entry that cannot be read back (deleted, truncated or altered files: each array's CRC-32 is
kept in ``meta.json`` and checked on a hit, about 0.06 s for CIFAR-10) is rebuilt with a warning
naming the file.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from gapjax.data.splits import Split

__all__ = ["cached_splits"]

_FORMAT = 2  # 2: CRC-32 of every array in meta.json


def _fingerprint(source: Path) -> list:
    """``[relative path, size, mtime_ns]`` of the file, or of every file under the folder."""
    st = source.stat()
    if not source.is_dir():
        return [[".", st.st_size, st.st_mtime_ns]]
    out = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for f in sorted(files):
            p = Path(root, f)
            s = p.stat()
            out.append([p.relative_to(source).as_posix(), s.st_size, s.st_mtime_ns])
    return out


def _entry_dir(cache_dir: Path, name: str, sources: list[Path], version: str) -> tuple[Path, str]:
    where = hashlib.sha256(json.dumps([str(s) for s in sources]).encode()).hexdigest()[:10]
    key = hashlib.sha256(
        json.dumps(
            {
                "format": _FORMAT,
                "name": name,
                "version": version,
                "sources": [str(s) for s in sources],
                "state": [_fingerprint(s) for s in sources],
            }
        ).encode()
    ).hexdigest()
    return cache_dir / f"{name}-{where}-{key[:16]}", key


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array))


def _meta_crc(meta: dict) -> int:
    """The CRC-32 of meta.json's content (all but this field), however it is laid out."""
    rest = {k: v for k, v in meta.items() if k != "meta_crc32"}
    return zlib.crc32(json.dumps(rest, sort_keys=True).encode())


def _read_entry(entry: Path, key: str) -> dict[str, Split]:
    meta = json.loads((entry / "meta.json").read_text())
    if not isinstance(meta, dict) or meta.get("meta_crc32") != _meta_crc(meta):
        raise ValueError(f"{entry / 'meta.json'}: its CRC-32 does not match (altered)")
    if meta.get("key") != key:
        raise ValueError(f"{entry / 'meta.json'} has another key")
    out = {}
    for split, info in meta["splits"].items():
        arrays = {}
        for part in ("images", "labels"):
            file = entry / f"{split}.{part}.npy"
            arrays[part] = np.load(file, allow_pickle=False)
            if _crc(arrays[part]) != info["crc32"][part]:
                raise ValueError(f"{file}: its CRC-32 does not match meta.json (altered)")
        images, labels = arrays["images"], arrays["labels"]
        if list(images.shape) != info["images"] or list(labels.shape) != [info["images"][0]]:
            raise ValueError(f"{entry}: {split} arrays do not match meta.json")
        out[split] = Split(images, labels, tuple(info["class_names"]))
    return out


def _write_entry(cache_dir: Path, entry: Path, key: str, sources: list[Path], splits) -> None:
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{entry.name}."))
    try:
        for split, s in splits.items():
            np.save(tmp / f"{split}.images.npy", s.images, allow_pickle=False)
            np.save(tmp / f"{split}.labels.npy", s.labels, allow_pickle=False)
        meta = {
            "key": key,
            "sources": [str(p) for p in sources],
            "splits": {
                k: {
                    "images": list(s.images.shape),
                    "class_names": list(s.class_names),
                    "crc32": {"images": _crc(s.images), "labels": _crc(s.labels)},
                }
                for k, s in splits.items()
            },
        }
        meta["meta_crc32"] = _meta_crc(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_splits(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None,
    name: str,
    build: Callable[[], Mapping[str, Split]],
    version: str = "1",
) -> dict[str, Split]:
    """Returns ``build()``, from the cache when ``source`` has not changed since it was cached.

    Args:
      source: the file or folder ``build`` reads (or a list of them); their absolute paths,
        sizes and mtimes key the entry.
      cache_dir: the cache folder (created if needed); None calls ``build()`` and caches nothing.
      name: the reader and its settings (e.g. ``"cifar100-fine"``); part of the key and of the
        entry's folder name (letters, digits, ``-`` and ``_``).
      build: reads the source; returns a mapping of split names (e.g. "train", "test") to Splits.
      version: the reader's version; bump it when the reader's output changes.

    Returns:
      A dict of Splits, equal to what ``build()`` returns.

    Example:
      >>> import numpy as np, pathlib, tempfile
      >>> from gapjax.data import Split, cached_splits
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (tmp / "source.txt").write_text("3")
      >>> def build():
      ...     n = int((tmp / "source.txt").read_text())
      ...     return {"train": Split(np.zeros((n, 1, 1, 1), np.uint8), np.zeros(n, np.int32))}
      >>> cached_splits(tmp / "source.txt", cache_dir=tmp / "cache", name="toy", build=build)
      {'train': Split(images=uint8[3, 1, 1, 1], labels=int32[3])}
      >>> len(list((tmp / "cache").iterdir()))
      1
    """
    if cache_dir is None:
        return dict(build())
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"cached_splits: name={name!r} must be letters, digits, - and _.")
    paths = [source] if isinstance(source, str | os.PathLike) else list(source)
    sources = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry, key = _entry_dir(cache_dir, name, sources, version)
    if (entry / "meta.json").exists():
        try:
            return _read_entry(entry, key)
        except Exception as e:  # NumPy's header parser alone raises ValueError, TokenError, ...
            warnings.warn(f"cache entry {entry} is unreadable ({e}); rebuilding it.", stacklevel=2)
    splits = dict(build())
    try:
        _write_entry(cache_dir, entry, key, sources, splits)
    except OSError as e:
        warnings.warn(f"could not write the cache entry {entry} ({e}).", stacklevel=2)
        return splits
    # Older entries of the same reader and source are stale now.
    prefix = entry.name[: -len(key[:16])]
    for old in cache_dir.glob(f"{prefix}*"):
        if old != entry and old.is_dir():
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return splits
