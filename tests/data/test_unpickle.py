"""The restricted unpickler: reads real-format CIFAR pickles, refuses anything that runs code."""

import os
import pickle
import pickletools

import numpy as np
import pytest
from datafakes import cifar_rows, py2_pickle, random_images

from gapjax.data._unpickle import load_restricted_pickle


class _Evil:
    """Unpickling this runs ``command`` through ``reducer`` (os.system, builtins.eval, ...)."""

    def __init__(self, reducer, *args):
        self.reducer, self.args = reducer, args

    def __reduce__(self):
        return self.reducer, self.args


def _globals(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_python2_cifar_pickle_round_trips():
    rng = np.random.default_rng(0)
    x = random_images(rng, 3)
    data = py2_pickle({b"data": cifar_rows(x), b"labels": [3, 1, 4], b"batch_label": b"b1"})
    # The stream names exactly the globals of the real CIFAR files.
    assert _globals(data) == {
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
    }
    obj = load_restricted_pickle(data, source="data_batch_1")
    assert obj[b"labels"] == [3, 1, 4] and obj[b"batch_label"] == b"b1"
    np.testing.assert_array_equal(obj[b"data"], cifar_rows(x))
    assert obj[b"data"].dtype == np.uint8


def test_python3_protocol2_pickle_loads():
    """Python 3 writes bytes as _codecs.encode(str, 'latin1'); that call is allowed."""
    d = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2]}
    data = pickle.dumps(d, protocol=2)
    assert "_codecs encode" in _globals(data)
    obj = load_restricted_pickle(data, source="f")
    np.testing.assert_array_equal(obj[b"data"], d[b"data"])
    assert obj[b"labels"] == [1, 2]


@pytest.mark.parametrize("reducer", [os.system, eval, exec], ids=["os.system", "eval", "exec"])
def test_malicious_pickle_runs_nothing(tmp_path, reducer):
    marker = tmp_path / "pwned"
    if reducer is os.system:
        payload = _Evil(os.system, f"touch {marker}")
    else:
        payload = _Evil(reducer, f"open({str(marker)!r}, 'w').close()")
    data = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)
    with pytest.raises(ValueError) as err:
        load_restricted_pickle(data, source="cifar-10-batches-py/data_batch_1")
    assert not marker.exists()
    message = str(err.value)
    assert "cifar-10-batches-py/data_batch_1" in message
    assert reducer.__name__ in message  # e.g. "posix.system", "builtins.eval"


def test_the_malicious_payload_is_real(tmp_path):
    """Guard for the test above: the same payload does run under pickle.loads."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2))
    assert marker.exists()


def test_codecs_encode_is_limited_to_latin1():
    # What pickle emits for bytes, but with another codec: refused.
    data = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(ValueError, match="latin1"):
        load_restricted_pickle(data, source="f.pkl")


def test_truncated_and_garbage_pickles_name_the_source():
    data = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch: not a readable pickle"):
        load_restricted_pickle(data[: len(data) // 2], source="test_batch")
    with pytest.raises(ValueError, match=r"junk\.bin"):
        load_restricted_pickle(b"\x00\x01 this is not a pickle", source="junk.bin")
