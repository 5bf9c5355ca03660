"""Image folders (one subfolder per class), as a directory or a tar archive, and CIFAR-10's
JPEG copy.

Layout: ``root/<class name>/<image>.{jpg,jpeg,png}``. Class names are sorted and numbered from 0;
images are sorted by class, then file name, so the order never depends on the file system or
the archive. Archives are read in memory (nothing is extracted, so member paths cannot escape).
Hidden files (names starting with ".") are ignored; any other file that is not a JPEG or PNG in a
class folder, a file beside the class folders, a deeper folder, or a class folder without images
(which would silently renumber the classes after it) is an error naming it.

Decoding uses Pillow, one image after another: about 4 s for CIFAR-10's 60,000 32x32 JPEGs on
one core (decoding in a thread pool was measured slower: Pillow's per-image work holds the GIL).
Pass ``cache_dir`` to decode only once.
"""

import io
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gapjax.data._checks import is_int
from gapjax.data._files import CIFAR10_JPEG, optional_import, verify_file
from gapjax.data.cache import cached_splits
from gapjax.data.splits import Split

__all__ = ["CIFAR10_CLASSES", "load_cifar10_jpeg", "load_image_folder"]

PathLike = str | os.PathLike
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_EXTENSIONS = (".jpg", ".jpeg", ".png")
_CHANNELS = {"RGB": 3, "L": 1}
_VERSION = "1"

# A listing: for each root, (class name, display name, bytes or path) of every image.
_Entry = tuple[str, str, bytes | Path]


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def _classify(rel: str, where: str) -> tuple[str, str] | None:
    """``(class, file)`` for ``class/file`` under a root; None for hidden files; else an error."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return None
    if len(parts) != 2:
        raise ValueError(
            f"{where}: expected <class>/<image> under the root, found {rel!r} "
            f"({'a file beside the class folders' if len(parts) == 1 else 'a nested folder'})."
        )
    if not parts[1].lower().endswith(_EXTENSIONS):
        raise ValueError(f"{where}: {rel!r} is not a .jpg, .jpeg or .png image.")
    return parts[0], parts[1]


def _list_tar(archive: Path, roots: Sequence[str]) -> dict[str, list[_Entry]]:
    """One pass over the archive, keeping the bytes of the images under each root."""
    roots = [r.strip("/") for r in roots]
    out: dict[str, list[_Entry]] = {r: [] for r in roots}
    folders: dict[str, dict[str, str]] = {r: {} for r in roots}  # class -> where, per root
    try:
        with tarfile.open(archive, "r:*") as tf:
            prefixes = [(root, f"{root}/" if root else "") for root in roots]
            for m in tf:
                name = m.name.removeprefix("./").rstrip("/")
                for root, prefix in prefixes:
                    if not name.startswith(prefix):
                        continue
                    rel = name[len(prefix) :]
                    where = f"{archive}:{name}"
                    if m.isdir():
                        _folder(rel, where, folders[root])
                        continue
                    key = _classify(rel, where)
                    if key is None:
                        continue
                    if not m.isfile():
                        raise ValueError(f"{where}: not a regular file (link or device).")
                    out[root].append((key[0], where, tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e})."
        ) from None
    for root, entries in out.items():
        if not entries:
            raise ValueError(f"{archive}: no images under {root or 'the archive root'!r}.")
        _check_no_empty_class(folders[root], entries)
    return out


def _folder(rel: str, where: str, folders: dict[str, str]) -> None:
    """Records a visible folder ``rel`` under the root: class folders, and deeper ones (errors
    once the listing is done, so that a file inside one is named first)."""
    parts = rel.split("/") if rel else []
    if parts and not any(p.startswith(".") for p in parts):
        folders[rel] = where


def _check_no_empty_class(folders: dict[str, str], entries: list[_Entry]) -> None:
    """No folder deeper than the class folders; no class folder without images (it would drop
    the class and renumber those after it)."""
    nested = sorted(rel for rel in folders if "/" in rel)
    if nested:
        raise ValueError(
            f"{folders[nested[0]]}: expected <class>/<image> under the root, found the nested "
            f"folder {nested[0]!r}."
        )
    empty = sorted(set(folders) - {e[0] for e in entries})
    if empty:
        where = [folders[c] for c in empty]
        raise ValueError(
            f"{where[0]}: the class folder {empty[0]!r} holds no .jpg, .jpeg or .png image"
            + (f" (nor do {where[1:]})" if len(where) > 1 else "")
            + "; remove it or add its images (an empty class would renumber the classes after "
            "it)."
        )


def _list_dir(folder: Path) -> list[_Entry]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder: no directory at {folder}.")
    out: list[_Entry] = []
    folders: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for d in dirs:
            p = Path(root, d)
            _folder(p.relative_to(folder).as_posix(), str(p), folders)
        for f in files:
            p = Path(root, f)
            key = _classify(p.relative_to(folder).as_posix(), str(p))
            if key is not None:
                out.append((key[0], str(p), p))
    if not out:
        raise ValueError(f"{folder}: no images in class subfolders.")
    _check_no_empty_class(folders, out)
    return out


def _decode(entries: list[_Entry], *, mode: str, size: tuple[int, int] | None) -> Split:
    image_module = optional_import("PIL.Image", fn="load_image_folder")
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    class_names = tuple(sorted({e[0] for e in entries}))
    index = {c: i for i, c in enumerate(class_names)}
    channels = _CHANNELS[mode]
    out = None
    expected = "expected" if size else "the first image is"
    for i, (_, where, source) in enumerate(entries):
        try:
            data = source if isinstance(source, bytes) else source.read_bytes()
            with image_module.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
                if im.mode != mode:
                    im = im.convert(mode)
                width, height = im.size
                pixels = np.frombuffer(im.tobytes(), np.uint8)
        except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as e:
            raise ValueError(f"{where}: not a readable JPEG/PNG image ({e}).") from None
        if out is None:
            size = size or (height, width)
            out = np.empty((len(entries), *size, channels), np.uint8)
        if (height, width) != tuple(size):
            raise ValueError(
                f"{where}: image is {height}x{width} (height x width), {expected} "
                f"{size[0]}x{size[1]}; images are never resized."
            )
        out[i] = pixels.reshape(height, width, channels)
    labels = np.array([index[e[0]] for e in entries], np.int32)
    return Split(out, labels, class_names)


def _check_mode(mode: str, fn: str) -> None:
    if mode not in _CHANNELS:
        raise ValueError(f'{fn}: mode={mode!r} must be "RGB" or "L".')


def load_image_folder(
    path: PathLike,
    *,
    root: str = "",
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    cache_dir: PathLike | None = None,
) -> Split:
    """Reads an image-folder dataset: one subfolder per class, JPEG or PNG images inside.

    Args:
      path: the folder, or a ``.tar``/``.tar.gz``/``.tgz`` archive of it (read in memory).
      root: the folder inside ``path`` that holds the class folders, e.g. ``"cifar10-jpeg/train"``
        (default: ``path`` itself, or the archive's top level).
      mode: "RGB" (3 channels) or "L" (grayscale, 1 channel). Images in another mode are converted
        with Pillow's ``Image.convert`` (grayscale to RGB repeats the channel; RGBA to RGB drops
        alpha; palette images are expanded).
      size: the required ``(height, width)``; default: that of the first image. Images are never
        resized: another size is an error naming the file.
      cache_dir: keep the decoded arrays there for fast reloads.

    Returns:
      A Split: uint8 images (n, height, width, channels) sorted by class then file name, labels
      indexing the sorted class names (``split.class_names``).

    Raises:
      FileNotFoundError: no such file or folder.
      ValueError: an unreadable image, a file that is not an image, an image of another size,
        a class folder without images, a nested folder, or a corrupt archive; the message names
        the file or folder.

    Example:
      >>> import numpy as np, pathlib, tempfile
      >>> from PIL import Image
      >>> from gapjax.data import load_image_folder
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> for cls, value in (("dog", 200), ("cat", 100)):
      ...     (tmp / cls).mkdir()
      ...     Image.new("RGB", (4, 3), (value,) * 3).save(tmp / cls / "0.png")
      >>> s = load_image_folder(tmp)
      >>> s, s.class_names, s.labels, s.images[:, 0, 0, 0]
      (Split(images=uint8[2, 3, 4, 3], labels=int32[2], classes=2), ('cat', 'dog'),
       array([0, 1], dtype=int32), array([100, 200], dtype=uint8))
    """
    _check_mode(mode, "load_image_folder")
    if size is not None and not (
        isinstance(size, tuple | list) and len(size) == 2 and all(is_int(v, 1) for v in size)
    ):
        raise ValueError(f"load_image_folder: size={size!r} must be (height, width), ints >= 1.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_image_folder: no file or folder at {path}.")

    def build():
        if _is_archive(path):
            entries = _list_tar(path, [root])[root.strip("/")]
        else:
            entries = _list_dir(path / root)
        return {"split": _decode(entries, mode=mode, size=size)}

    name = f"imagefolder-{mode}-{size[0]}x{size[1]}" if size else f"imagefolder-{mode}"
    source = path if _is_archive(path) else path / root
    if cache_dir is None:
        return build()["split"]
    key = f"{name}-{root.strip('/').replace('/', '_')}" if root.strip("/") else name
    key = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    return cached_splits(source, cache_dir=cache_dir, name=key, build=build, version=_VERSION)[
        "split"
    ]


def load_cifar10_jpeg(
    path: PathLike, *, verify: bool = True, cache_dir: PathLike | None = None
) -> dict[str, Split]:
    """Reads the JPEG copy of CIFAR-10 that ships beside the project (``cifar10-jpeg.tar.gz``).

    Layout ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``: 50,000 train and 10,000 test 32x32 RGB
    JPEGs (quality 75, so pixel values differ from the official CIFAR-10 bytes: report results as
    "CIFAR-10 (JPEG copy)"). The archive is read once for both splits and its SHA-256 checked.
    The ten class folders sort into CIFAR-10's own label order (airplane=0, ..., truck=9).

    Args:
      path: the archive, or its extracted ``cifar10-jpeg/`` folder (or the folder holding it).
      verify: check the archive's size and SHA-256 (``3aee566d...``) before reading it.
      cache_dir: keep the decoded arrays there (a reload then takes well under a second).

    Returns:
      ``{"train": Split, "test": Split}``: images uint8 (n, 32, 32, 3), labels 0..9.

    Example:
      >>> from gapjax.data import load_cifar10_jpeg
      >>> load_cifar10_jpeg("no/such/cifar10-jpeg.tar.gz")
      Traceback (most recent call last):
      ...
      FileNotFoundError: load_cifar10_jpeg: no archive or folder at no/such/cifar10-jpeg.tar.gz...
      >>> load_cifar10_jpeg("../shared/data/cifar10-jpeg.tar.gz")["train"]  # doctest: +SKIP
      Split(images=uint8[50000, 32, 32, 3], labels=int32[50000], classes=10)
    """
    path = Path(path)
    if path.is_dir() and (path / "cifar10-jpeg").is_dir():
        path = path / "cifar10-jpeg"
    if not path.exists():
        raise FileNotFoundError(
            f"load_cifar10_jpeg: no archive or folder at {path}. It ships beside the project as "
            f"shared/data/{CIFAR10_JPEG.name} ({CIFAR10_JPEG.size:,} bytes, sha256 "
            f"{CIFAR10_JPEG.sha256})."
        )

    def build():
        if path.is_file():
            if verify:
                verify_file(path, CIFAR10_JPEG)
            listing = _list_tar(path, ["cifar10-jpeg/train", "cifar10-jpeg/test"])
            entries = {s: listing[f"cifar10-jpeg/{s}"] for s in ("train", "test")}
        else:
            entries = {s: _list_dir(path / s) for s in ("train", "test")}
        out = {s: _decode(e, mode="RGB", size=(32, 32)) for s, e in entries.items()}
        for s, split in out.items():
            if split.class_names != CIFAR10_CLASSES:
                raise ValueError(
                    f"{path}: the {s} class folders are {list(split.class_names)}, not CIFAR-10's "
                    f"{list(CIFAR10_CLASSES)}."
                )
        return out

    if cache_dir is None:
        return build()
    return cached_splits(
        path,
        cache_dir=cache_dir,
        name="cifar10-jpeg" if verify else "cifar10-jpeg-unverified",
        build=build,
        version=_VERSION,
    )
