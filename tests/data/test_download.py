"""Downloads: verified, atomic, and helpful when offline. Never touches the real network."""

import hashlib
import io
import urllib.error
import urllib.request

import pytest

from gapjax.data import DATASET_FILES, DownloadError, download_dataset, download_file

PAYLOAD = bytes(range(256)) * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the real network fails loudly, as on every machine here."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dst = tmp_path / "out" / "dst.bin"

    def file_opener(url, timeout):  # urllib's file:// handler (urlopen itself is offline here)
        return urllib.request.build_opener().open(url, timeout=timeout)

    out = download_file(src.as_uri(), path=dst, size=len(PAYLOAD), sha256=SHA, opener=file_opener)
    assert out == dst and dst.read_bytes() == PAYLOAD
    assert leftovers(dst.parent) == ["dst.bin"]  # no temporary file left behind


def test_existing_verified_file_is_kept_without_downloading(tmp_path):
    dst = tmp_path / "f.bin"
    dst.write_bytes(PAYLOAD)

    def opener(url, timeout):
        raise AssertionError("downloaded again")

    assert download_file("https://x/f.bin", path=dst, size=len(PAYLOAD), sha256=SHA, opener=opener)


def test_existing_corrupt_file_is_an_error_and_kept(tmp_path):
    dst = tmp_path / "f.bin"
    dst.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(ValueError, match=rf"{dst}: sha256 .* does not match"):
        download_file("https://x/f.bin", path=dst, size=len(PAYLOAD), sha256=SHA)
    assert dst.read_bytes() == PAYLOAD[:-1] + b"\x00"


@pytest.mark.parametrize(
    "served, message",
    [
        (PAYLOAD[:-1] + b"\x01", "the downloaded bytes have sha256"),
        (PAYLOAD[:1000], "received 1,000 bytes where 256,000"),
        (PAYLOAD + b"extra", "received more than the 256,000 bytes expected"),
    ],
    ids=["wrong-checksum", "short", "long"],
)
def test_bad_downloads_leave_nothing(tmp_path, served, message):
    dst = tmp_path / "f.bin"
    with pytest.raises(ValueError, match=message) as err:
        download_file(
            "https://example.org/f.bin",
            path=dst,
            size=len(PAYLOAD),
            sha256=SHA,
            opener=lambda url, timeout: io.BytesIO(served),
        )
    assert "https://example.org/f.bin" in str(err.value) and str(dst) in str(err.value)
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path):
    class Flaky(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(1000)

    with pytest.raises(DownloadError, match="ConnectionResetError"):
        download_file(
            "https://example.org/f.bin",
            path=tmp_path / "f.bin",
            size=len(PAYLOAD),
            sha256=SHA,
            opener=lambda url, timeout: Flaky(PAYLOAD),
        )
    assert leftovers(tmp_path) == []


def test_offline_error_says_what_to_place_where(tmp_path):
    with pytest.raises(DownloadError) as err:
        download_dataset("mnist", data_dir=tmp_path / "mnist")
    message = str(err.value)
    first = DATASET_FILES["mnist"][0]
    assert first.url in message and "name resolution" in message
    assert str(tmp_path / "mnist" / first.name) in message
    assert f"{first.size:,} bytes" in message and first.sha256 in message
    assert isinstance(err.value, OSError)
    assert leftovers(tmp_path / "mnist") == []


def test_download_dataset_with_a_fake_server(tmp_path):
    """Serves the right size but wrong bytes for every official file: each is rejected."""
    served = []

    def opener(url, timeout):
        served.append(url)
        size = next(f.size for files in DATASET_FILES.values() for f in files if f.url == url)
        return io.BytesIO(bytes(size))

    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: the downloaded bytes"):
        download_dataset(
            "mnist", data_dir=tmp_path, files=["t10k-labels-idx1-ubyte.gz"], opener=opener
        )
    assert served == ["https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"]
    assert leftovers(tmp_path) == []


def test_download_dataset_arguments():
    with pytest.raises(ValueError, match="unknown dataset name 'imagenet'"):
        download_dataset("imagenet", data_dir=".")
    with pytest.raises(ValueError, match=r"\['train_32x32\.zip'\] are not part of 'svhn'"):
        download_dataset("svhn", data_dir=".", files=["train_32x32.zip"])


def test_registry_matches_reference():
    """The URLs, sizes and SHA-256 of REFERENCE.md section 4."""
    (cifar10,) = DATASET_FILES["cifar10"]
    assert cifar10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar10.size == 170_498_071
    assert cifar10.sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    extra = DATASET_FILES["svhn"][2]
    assert extra.url == "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat"
    assert extra.sha256 == "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3"
    assert [f.name for f in DATASET_FILES["mnist"]] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert (
        sum(f.size for files in DATASET_FILES.values() for f in files) == 1_926_689_010
    )  # REFERENCE.md section 4, summed by hand
