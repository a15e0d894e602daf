"""What a real server does with unusual inputs to the shipped model: uint8 ``.npy`` bodies (divided by 255),
a row that overflows (422 in MC mode as in deterministic mode) and 0-255 pixels sent as numbers (a note)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from mcdrop.client import APIError, Client
from mcdrop.wire import META_HEADER, NPY, decode_result, encode_npy
from tests.server import running_server
from tests.tolerances import assert_probabilities_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]
IMAGES = np.random.default_rng(3).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def url():
    with running_server() as base:  # the bundled default model (Fashion-MNIST MLP, inputs in [0, 1])
        yield base


def post_npy(url: str, x: np.ndarray, query: str) -> httpx.Response:
    return httpx.post(f"{url}/predict?{query}", content=encode_npy(x), headers={"content-type": NPY, "accept": NPY},
                      timeout=60)


@pytest.mark.parametrize("query", ["n_samples=20&seed=7", "mode=deterministic"])
def test_uint8_bodies_are_divided_by_255_like_the_cli(url, query):
    as_uint8 = post_npy(url, IMAGES, query)
    as_float = post_npy(url, IMAGES.astype(np.float32) / 255, query)
    assert as_uint8.status_code == as_float.status_code == 200, as_uint8.text
    got = decode_result(as_uint8.content, as_uint8.headers[META_HEADER])
    want = decode_result(as_float.content, as_float.headers[META_HEADER])
    assert_probabilities_close(got.probabilities, want.probabilities)
    assert not any("0-255" in n for n in got.notes)


def test_the_client_divides_uint8_arrays_too(url):
    with Client(url) as client:
        got = client.predict(IMAGES, n_samples=20, seed=7)
        want = client.predict(IMAGES.astype(np.float32) / 255, n_samples=20, seed=7)
    assert_probabilities_close(got.probabilities, want.probabilities)


@pytest.mark.parametrize("mode", ["mc", "deterministic"])
def test_an_overflowing_row_is_422_in_both_modes(url, mode):
    """The fused MC kernel gave finite logits for a row of 3e38, so MC mode answered 200 (deterministic: 422)."""
    rows = np.full((2, 784), 0.5, np.float32)
    rows[1] = 3e38
    answer = httpx.post(f"{url}/predict", json={"inputs": rows.tolist(), "mode": mode, "seed": 1, "n_samples": 20},
                        timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "inputs" and "inputs[1]" in answer.json()["error"]
    binary = post_npy(url, rows, f"mode={mode}&seed=1&n_samples=20")
    assert binary.status_code == 422
    with Client(url) as client, pytest.raises(APIError) as err:
        client.predict(rows, mode=mode, seed=1, n_samples=20)
    assert err.value.status == 422


def test_pixels_sent_as_0_to_255_numbers_get_a_note(url):
    pixels = IMAGES[:3].reshape(3, -1).astype(float).tolist()
    answer = httpx.post(f"{url}/predict", json={"inputs": pixels, "n_samples": 10, "seed": 1}, timeout=60)
    assert answer.status_code == 200
    notes = [n for n in answer.json()["notes"] if "0-255" in n]
    assert len(notes) == 1 and "divide them by 255" in notes[0] and "fashion-mnist" in notes[0]
    scaled = (IMAGES[:3].reshape(3, -1) / 255).tolist()
    clean = httpx.post(f"{url}/predict", json={"inputs": scaled, "n_samples": 10, "seed": 1}, timeout=60).json()
    assert not any("0-255" in n for n in clean["notes"])
