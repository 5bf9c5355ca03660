"""Image folders (directories and tarballs), CIFAR-10's JPEG copy, and the real shipped copy."""

import hashlib
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from datafakes import write_tar
from PIL import Image

from gapjax.data import CIFAR10_CLASSES, Split, load_cifar10_jpeg, load_image_folder

REAL_JPEG = Path(__file__).resolve().parents[2].parent / "shared/data/cifar10-jpeg.tar.gz"
REAL_SHA256 = "3aee566dde2b7c94db9bc539afcc29dba4217a42de87e426dbc1e588cde582f4"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tree(rng, classes=("zebra", "ant", "moth"), per_class=(2, 3, 1), h=5, w=7, channels=3):
    """({relative path: bytes}, expected images sorted by (class, file), labels, class names)."""
    files, images, labels = {}, [], []
    names = sorted(classes)
    for cls, count in zip(classes, per_class, strict=True):
        for j in range(count):
            x = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            files[f"{cls}/{j:04d}.png"] = png(x)
    for rel in sorted(files, key=lambda r: tuple(r.split("/"))):
        cls = rel.split("/")[0]
        images.append(np.asarray(Image.open(io.BytesIO(files[rel]))).reshape(h, w, channels))
        labels.append(names.index(cls))
    return files, np.stack(images), np.array(labels), tuple(names)


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def check(split: Split, images, labels, names):
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert split.class_names == names


def test_directory_of_pngs(tmp_path, rng):
    files, images, labels, names = tree(rng)
    split = load_image_folder(write_dir(tmp_path / "root", files))
    check(split, images, labels, names)
    assert names == ("ant", "moth", "zebra") and split.labels.tolist() == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar", ".tgz"])
def test_tarball_with_root(tmp_path, rng, suffix):
    files, images, labels, names = tree(rng)
    other, _, _, _ = tree(rng, classes=("x",), per_class=(1,))
    members = {f"data/train/{k}": v for k, v in files.items()}
    members.update({f"data/test/{k}": v for k, v in other.items()})
    path = write_tar(tmp_path / f"images{suffix}", members, mode="w:gz" if "gz" in suffix else "w")
    check(load_image_folder(path, root="data/train"), images, labels, names)
    check(load_image_folder(path, root="data/train/"), images, labels, names)


def test_hidden_files_are_ignored_and_others_are_errors(tmp_path, rng):
    files, images, labels, names = tree(rng)
    root = write_dir(tmp_path / "root", files)
    (root / "ant" / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk")
    check(load_image_folder(root), images, labels, names)
    (root / "ant" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"ant/notes\.txt' is not a \.jpg, \.jpeg or \.png"):
        load_image_folder(root)
    (root / "ant" / "notes.txt").unlink()
    (root / "README.md").write_text("hello")
    with pytest.raises(ValueError, match=r"'README\.md' \(a file beside the class folders\)"):
        load_image_folder(root)
    (root / "README.md").unlink()
    (root / "ant" / "deeper").mkdir()
    (root / "ant" / "deeper" / "1.png").write_bytes(files["ant/0000.png"])
    with pytest.raises(ValueError, match=r"ant/deeper/1\.png' \(a nested folder\)"):
        load_image_folder(root)


def test_size_and_decoding_errors_name_the_file(tmp_path, rng):
    files, _, _, _ = tree(rng)
    files["moth/0001.png"] = png(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))
    root = write_dir(tmp_path / "a", files)
    with pytest.raises(ValueError, match=r"moth/0001\.png: image is 6x7 .* the first image is 5x7"):
        load_image_folder(root)
    with pytest.raises(ValueError, match=r"ant/0000\.png: image is 5x7 .* expected 6x7"):
        load_image_folder(root, size=(6, 7))
    files, _, _, _ = tree(rng)
    files["ant/0001.png"] = files["ant/0001.png"][:40]
    path = write_tar(tmp_path / "t.tar.gz", files)
    with pytest.raises(ValueError, match=r"t\.tar\.gz:ant/0001\.png: not a readable JPEG/PNG"):
        load_image_folder(path)
    files["ant/0001.png"] = b"GIF89a" + bytes(40)
    with pytest.raises(ValueError, match=r"ant/0001\.png: not a readable JPEG/PNG"):
        load_image_folder(write_dir(tmp_path / "b", files))


def test_truncated_or_empty_archives(tmp_path, rng):
    files, _, _, _ = tree(rng)
    path = write_tar(tmp_path / "t.tar.gz", files)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"t\.tar\.gz: corrupt or truncated archive"):
        load_image_folder(path)
    with pytest.raises(ValueError, match=r"no images under 'nothing/here'"):
        load_image_folder(write_tar(tmp_path / "u.tar.gz", files), root="nothing/here")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, rng):
    """cat/ dog/ zebra/ with dog/ empty must not load as ('cat', 'zebra') with zebra renumbered
    2 -> 1 (issue 20); torchvision's ImageFolder refuses it too."""
    files, _, _, _ = tree(rng, classes=("cat", "zebra"), per_class=(2, 1))
    root = write_dir(tmp_path / "root", files)
    (root / "dog").mkdir()
    with pytest.raises(ValueError, match=r"root/dog: the class folder 'dog' holds no"):
        load_image_folder(root)
    (root / "dog" / ".DS_Store").write_bytes(b"junk")  # hidden files are not images
    with pytest.raises(ValueError, match=r"'dog' holds no"):
        load_image_folder(root)
    (root / "dog" / ".DS_Store").unlink()
    (root / "zebra" / "0000.png").unlink()  # two empty classes: both named
    with pytest.raises(ValueError, match=r"'dog' holds no .* \(nor do \['.*zebra'\]\)"):
        load_image_folder(root)
    (root / "dog").rmdir()
    (root / "zebra").rmdir()
    (root / "cat" / "empty").mkdir()  # an empty nested folder is named too
    with pytest.raises(ValueError, match=r"cat/empty: .* the nested folder 'cat/empty'"):
        load_image_folder(root)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_an_empty_class_folder_in_an_archive_is_an_error_naming_it(tmp_path, rng, mode):
    files, _, _, _ = tree(rng, classes=("cat", "zebra"), per_class=(2, 1))
    members = {f"data/{k}": v for k, v in files.items()}
    path = tmp_path / "images.tar"
    folders = ("data/", "data/cat/", "data/dog/", "data/zebra/")
    write_tar(path, members, mode=mode, folders=folders)
    with pytest.raises(ValueError, match=r"images\.tar:data/dog: the class folder 'dog' holds"):
        load_image_folder(path, root="data")
    # Deleting the only member of a class leaves its folder: rejected the same way.
    with tarfile.open(path) as tf:
        kept = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    del kept["data/zebra/0000.png"]
    write_tar(tmp_path / "deleted.tar.gz", kept)  # writes the folders of the members left
    split = load_image_folder(tmp_path / "deleted.tar.gz", root="data")
    assert split.class_names == ("cat",)  # no zebra folder left at all: nothing is renumbered
    write_tar(tmp_path / "deleted.tar.gz", kept, folders=("data", "data/cat", "data/zebra"))
    with pytest.raises(ValueError, match=r"deleted\.tar\.gz:data/zebra: the class folder"):
        load_image_folder(tmp_path / "deleted.tar.gz", root="data")


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_or_flipped_images_are_rejected_naming_the_file(tmp_path, rng, kind):
    """The corruption sweep for image folders: every truncation and every flipped byte either
    raises ValueError naming the file, or (PNG: chunks carry CRCs) loads the original pixels.
    JPEG has no checksum: a flipped byte in its entropy-coded data decodes to other pixels, so
    only the error's form is checked there."""
    x = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png(x) if kind == "png" else jpeg(x)
    expected = np.asarray(Image.open(io.BytesIO(data)))
    folder = tmp_path / "a"
    folder.mkdir()
    file = folder / f"0.{'png' if kind == 'png' else 'jpg'}"
    variants = [data[:n] for n in range(0, len(data), 3)]
    for i in range(0, len(data), 2):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        variants.append(bytes(flipped))
    for variant in variants:
        file.write_bytes(variant)
        try:
            split = load_image_folder(tmp_path)
        except ValueError as e:
            assert str(file) in str(e)
            continue
        if kind == "png" or len(variant) < len(data):
            np.testing.assert_array_equal(split.images[0], expected)


def test_symlink_members_are_refused(tmp_path, rng):
    files, _, _, _ = tree(rng, classes=("a",), per_class=(1,))
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/evil.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(ValueError, match=r"a/evil\.png: not a regular file"):
        load_image_folder(path)


def test_modes(tmp_path, rng):
    gray = rng.integers(0, 256, (2, 3, 4, 1), dtype=np.uint8)
    root = write_dir(tmp_path / "g", {f"c/{i}.png": png(g) for i, g in enumerate(gray)})
    check(load_image_folder(root, mode="L"), gray, [0, 0], ("c",))
    # Grayscale converted to RGB repeats the channel (Pillow's Image.convert).
    check(load_image_folder(root, mode="RGB"), np.repeat(gray, 3, axis=-1), [0, 0], ("c",))
    with pytest.raises(ValueError, match="mode='CMYK'"):
        load_image_folder(root, mode="CMYK")


def test_jpegs_decode_like_pillow(tmp_path, rng):
    ramp = np.arange(8)[:, None, None] * 12 + np.arange(8)[None, :, None] * 6  # smooth
    x = np.stack([ramp + np.array([20 * i, 60, 100]) for i in range(3)]).astype(np.uint8)
    files = {f"k/{i}.jpg": jpeg(v) for i, v in enumerate(x)}
    split = load_image_folder(write_dir(tmp_path / "j", files))
    ref = np.stack([np.asarray(Image.open(io.BytesIO(files[f"k/{i}.jpg"]))) for i in range(3)])
    np.testing.assert_array_equal(split.images, ref)
    # Lossy, but close to what was encoded.
    assert np.abs(split.images.astype(int) - x).mean() < 4


def test_image_folder_cache(tmp_path, rng):
    files, images, labels, names = tree(rng)
    root = write_dir(tmp_path / "root", files)
    check(load_image_folder(root, cache_dir=tmp_path / "cache"), images, labels, names)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    check(load_image_folder(root, cache_dir=tmp_path / "cache"), images, labels, names)
    # A new image invalidates the entry.
    new = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (root / "moth" / "0009.png").write_bytes(png(new))
    split = load_image_folder(root, cache_dir=tmp_path / "cache")
    assert len(split) == 7 and np.array_equal(split.images[4], new)  # ant x3, moth/0000, moth/0009
    assert len(list((tmp_path / "cache").iterdir())) == 1


def fake_cifar10_jpeg(rng, classes=CIFAR10_CLASSES):
    files, expected = {}, {}
    for split, per_class in (("train", 2), ("test", 1)):
        ims, labs = [], []
        for c, cls in enumerate(classes):
            for j in range(per_class):
                data = jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                files[f"cifar10-jpeg/{split}/{cls}/{j:04d}.jpg"] = data
                ims.append(np.asarray(Image.open(io.BytesIO(data))))
                labs.append(c)
        expected[split] = (np.stack(ims), np.array(labs))
    return files, expected


def test_cifar10_jpeg_layout(tmp_path, rng):
    files, expected = fake_cifar10_jpeg(rng)
    path = write_tar(tmp_path / "cifar10-jpeg.tar.gz", files)
    with pytest.raises(ValueError, match=r"cifar10-jpeg\.tar\.gz: .* 19,758,569"):
        load_cifar10_jpeg(path)  # verified by default: this small fake is not the real file
    for source in (path, write_dir(tmp_path / "x", files), tmp_path / "x" / "cifar10-jpeg"):
        data = load_cifar10_jpeg(source, verify=False)
        for split in ("train", "test"):
            check(data[split], *expected[split], CIFAR10_CLASSES)


def test_cifar10_jpeg_wrong_classes(tmp_path, rng):
    files, _ = fake_cifar10_jpeg(rng, classes=[*CIFAR10_CLASSES[:9], "lorry"])
    path = write_tar(tmp_path / "c.tar.gz", files)
    with pytest.raises(ValueError, match=r"c\.tar\.gz: the train class folders are .*lorry"):
        load_cifar10_jpeg(path, verify=False)


@pytest.mark.skipif(not REAL_JPEG.is_file(), reason=f"{REAL_JPEG} is not present")
def test_real_cifar10_jpeg_copy():
    start = time.perf_counter()
    data = load_cifar10_jpeg(REAL_JPEG)  # checksum verified by default
    elapsed = time.perf_counter() - start
    train, test = data["train"], data["test"]
    assert train.images.shape == (50_000, 32, 32, 3) and test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names == CIFAR10_CLASSES
    # Spot check against an independent read of the archive's first training image: it is
    # among the images of its class, decoded identically.
    with tarfile.open(REAL_JPEG) as tf:
        member = next(m for m in tf if m.isfile() and m.name.startswith("cifar10-jpeg/train/"))
        ref = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
    label = CIFAR10_CLASSES.index(member.name.split("/")[2])
    same_class = train.images[train.labels == label]
    assert np.all(same_class == ref, axis=(1, 2, 3)).sum() >= 1
    digest = hashlib.sha256(REAL_JPEG.read_bytes()).hexdigest()
    assert digest == REAL_SHA256
    print(f"decoded 60,000 JPEGs in {elapsed:.1f} s")
