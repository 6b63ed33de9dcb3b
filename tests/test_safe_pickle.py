"""Loading downloaded pickles without running code from them."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest

from csa_rerank import safe_pickle


class _SystemPayload:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _ExecPayload:
    """Unpickling this runs ``exec(code)``."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _payloads(marker):
    return {
        "os.system": _SystemPayload(f"touch '{marker}'"),
        "builtins.exec": _ExecPayload(f"open({str(marker)!r}, 'w').close()"),
    }


def test_real_ground_truth_loads(roxford_gnd_path):
    cfg = safe_pickle.load(roxford_gnd_path)
    assert sorted(cfg) == ["gnd", "imlist", "qimlist"]
    assert len(cfg["imlist"]) == 4993 and len(cfg["qimlist"]) == 70 and len(cfg["gnd"]) == 70
    assert cfg["qimlist"][54] == "bodleian_000132"
    assert cfg["gnd"][54]["bbx"] == [93, 110, 580, 925]
    assert sorted(cfg["gnd"][0]) == ["bbx", "easy", "hard", "junk"]
    with open(roxford_gnd_path, "rb") as handle:  # a trusted local copy: compare with the plain unpickler
        assert cfg == pickle.load(handle)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4])
def test_numpy_arrays_and_scalars_inside_containers(tmp_path, protocol):
    obj = {
        "ints": np.arange(5, dtype=np.int64),
        "floats": np.eye(2, dtype=np.float32),
        "strings": np.array(["a", "bc"]),
        "scalar": np.float32(2.5),
        "nested": [{"cids": ["x", "y"], "cluster": np.array([0, 0], dtype=np.int32)}, (1, 2.0, None, True)],
    }
    if protocol >= 3:
        obj["set"] = {1, 2}  # see test_sets_in_protocol_2_pickles for older protocols
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_pickle.load(path)
    assert loaded.keys() == obj.keys()
    for key in ("ints", "floats", "strings"):
        np.testing.assert_array_equal(loaded[key], obj[key])
        assert loaded[key].dtype == obj[key].dtype
    assert loaded["scalar"] == np.float32(2.5) and loaded["scalar"].dtype == np.float32
    np.testing.assert_array_equal(loaded["nested"][0]["cluster"], [0, 0])
    assert loaded["nested"][0]["cids"] == ["x", "y"] and loaded["nested"][1] == (1, 2.0, None, True)
    if protocol >= 3:
        assert loaded["set"] == {1, 2}


def test_sets_in_protocol_2_pickles():
    assert safe_pickle.loads(pickle.dumps({"s": {1, 2}}, protocol=2)) == {"s": {1, 2}}


def test_arrays_pickled_by_numpy_1_load():
    # numpy < 2 names its reconstructor numpy.core.multiarray (the rSfM120k files were written that way)
    data = pickle.dumps({"a": np.arange(3)}, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = safe_pickle.loads(old)
    np.testing.assert_array_equal(loaded["a"], [0, 1, 2])


def test_numpy_arrays_pickled_with_protocol_5():
    loaded = safe_pickle.loads(pickle.dumps({"a": np.arange(3)}, protocol=5))
    np.testing.assert_array_equal(loaded["a"], [0, 1, 2])


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_payloads_run_under_the_plain_unpickler(tmp_path, kind):
    # guard for the refusal test below: the payloads really do create their marker when unpickled naively
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_payloads(marker)[kind]))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "payload": _payloads(marker)[kind]}, protocol=2))
    with pytest.raises(safe_pickle.UnsafePickleError) as info:
        safe_pickle.load(path)
    message = str(info.value)
    assert str(path) in message
    assert ("system" in message) if kind == "os.system" else ("exec" in message)
    assert "download it again" in message
    assert not marker.exists()
    # the bytes API refuses too
    with pytest.raises(safe_pickle.UnsafePickleError, match="<bytes>"):
        safe_pickle.loads(path.read_bytes())
    assert not marker.exists()
    # UnsafePickleError is an UnpicklingError, so generic handlers still catch it
    assert issubclass(safe_pickle.UnsafePickleError, pickle.UnpicklingError)


def test_unknown_global_is_refused_before_it_is_imported():
    # a module that does not exist: refusal, not ModuleNotFoundError (nothing is looked up)
    data = b"cnonexistent_module_xyz\nanything\n."
    with pytest.raises(safe_pickle.UnsafePickleError, match="nonexistent_module_xyz.anything"):
        safe_pickle.loads(data, source="crafted")


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "gnd_roxford5k.pkl"
    full = pickle.dumps({"imlist": [f"img{i}" for i in range(100)], "gnd": [{"easy": [1, 2]}] * 20}, protocol=3)
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(pickle.UnpicklingError) as info:
        safe_pickle.load(path)
    assert not isinstance(info.value, safe_pickle.UnsafePickleError)
    assert str(path) in str(info.value)
    assert "truncated or corrupt" in str(info.value)


def test_garbage_and_empty_files_name_the_file(tmp_path):
    for name, content in (("empty.pkl", b""), ("html.pkl", b"<html>404 Not Found</html>")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(pickle.UnpicklingError, match=name):
            safe_pickle.load(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pkl"):
        safe_pickle.load(tmp_path / "nothing.pkl")


def test_dump_round_trip_leaves_no_temporary(tmp_path):
    obj = {"train": {"cids": ["a", "b"], "cluster": [0, 1], "qidxs": np.array([0]), "pidxs": np.array([1])}}
    path = tmp_path / "db.pkl"
    safe_pickle.dump(obj, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.pkl"]
    loaded = safe_pickle.load(path)
    assert loaded["train"]["cids"] == ["a", "b"]
    np.testing.assert_array_equal(loaded["train"]["pidxs"], [1])
    assert path.read_bytes()[:2] == b"\x80\x04"  # protocol 4


def test_one_numpy_allow_list_for_pickles_and_torch_load():
    from csa_rerank import networks

    torch_names = {name for _, name in networks._numpy_safe_globals()}
    numpy_names = {f"{module}.{name}" for module, name in safe_pickle.NUMPY_GLOBALS}
    assert torch_names <= numpy_names and "numpy._core.multiarray._reconstruct" in torch_names
    assert {"numpy.dtypes.Float64DType", "numpy.core.multiarray._reconstruct"} <= torch_names
    assert set(safe_pickle.NUMPY_GLOBALS) <= safe_pickle._ALLOWED_GLOBALS
