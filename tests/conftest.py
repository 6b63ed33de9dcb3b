"""Shared fixtures.

Real data (``../shared/data`` beside the checkout, see its README) is optional: a fresh clone has none, so every
fixture that points into it skips the requesting test with a reason naming the missing path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Index in gnd_roxford5k.pkl's ``qimlist`` of each photo in ``oxford-images`` (from ../shared/data/README.md).
OXFORD_QUERY_INDEX = {
    "bodleian_000132": 54,
    "oxford_002904": 51,
    "pitt_rivers_000033": 45,
    "pitt_rivers_000058": 49,
    "pitt_rivers_000087": 48,
    "pitt_rivers_000119": 46,
    "pitt_rivers_000153": 47,
    "radcliffe_camera_000095": 53,
    "radcliffe_camera_000519": 50,
    "radcliffe_camera_000523": 52,
}


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent (../shared/data sits beside CI checkouts only)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is absent."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def roxford_gnd_path(shared_data) -> Path:
    return _require(shared_data / "revisitop-gnd" / "gnd_roxford5k.pkl")


@pytest.fixture(scope="session")
def roxford_gnd(roxford_gnd_path) -> dict:
    from csa_rerank import safe_pickle

    return safe_pickle.load(roxford_gnd_path)


@pytest.fixture(scope="session")
def lopq_descriptors(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """(query [70, 128], db [4993, 128]) real ROxf descriptors, rows L2-normalised, float32."""
    folder = _require(shared_data / "oxford-lopq128")
    query = np.load(_require(folder / "roxf_q_70x128_raw.npy")).astype(np.float32)
    db = np.load(_require(folder / "roxf_db_4993x128_raw.npy")).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    return query, db


@pytest.fixture(scope="session")
def oxford_query_index() -> dict[str, int]:
    """{photo name: its index in gnd_roxford5k.pkl's qimlist}."""
    return dict(OXFORD_QUERY_INDEX)


@pytest.fixture(scope="session")
def oxford_images(shared_data) -> dict[str, Path]:
    """{name: path} of the 10 real Oxford query photos."""
    folder = _require(shared_data / "oxford-images")
    return {name: _require(folder / f"{name}.jpg") for name in OXFORD_QUERY_INDEX}


@pytest.fixture
def torch_single_thread():
    """Run a test with one intra-op thread (restored afterwards).

    On a shared machine with two cores, OpenMP threads of a convolution can spin against other processes and make
    a 50 ms forward pass take a second; one thread keeps CNN tests fast and their timing predictable.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
