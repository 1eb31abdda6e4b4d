"""The committed ``iqa_probe`` in a real tritonserver (the PyPI wheel's, CPU config = Python backend
running the same model.onnx), loaded alone with explicit model control: its outputs over gRPC equal
the gateway's embedded probe (serving/probe.py's ONNX Runtime session) on the gateway's crops, and
two concurrent requests batched together each get their own answer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from export.triton_server import TritonServer
from serving.model_store import resolve_model_version
from serving.probe import GRAD_OUTPUT, OUTPUTS, probe_model_path
from tests.triton_fixtures import MODEL_REPOSITORY, photo_bytes, start_server
from training.preprocessing import preprocess_bytes


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    triton = start_server(model_control="explicit", load_models=("iqa_probe",))
    try:
        yield triton
    finally:
        triton.stop()


def _infer(url: str, crops: np.ndarray) -> dict[str, np.ndarray]:
    tensor = grpcclient.InferInput("image", list(crops.shape), "UINT8")
    tensor.set_data_from_numpy(crops)
    result = grpcclient.InferenceServerClient(url).infer("iqa_probe", [tensor])
    return {name: result.as_numpy(name) for name in (*OUTPUTS, GRAD_OUTPUT)}


def test_triton_probe_equals_the_gateways_embedded_probe(server: TritonServer) -> None:
    model = resolve_model_version(MODEL_REPOSITORY, "iqa", 2)
    photos = photo_bytes()
    crops = [preprocess_bytes(data, model.preprocess) for data in list(photos.values())[:2]]
    session = ort.InferenceSession(str(probe_model_path(MODEL_REPOSITORY, "iqa", 2)),
                                   providers=["CPUExecutionProvider"])
    with ThreadPoolExecutor(2) as pool:  # concurrent: the dynamic batcher may merge them
        answers = list(pool.map(lambda c: _infer(server.grpc_url, c), crops))
    for c, answer in zip(crops, answers, strict=True):
        clean, adv, delta, grad_l1 = session.run([*OUTPUTS, GRAD_OUTPUT], {"image": c})
        for name in ("clean_score", "adv_score", "grad_l1"):
            assert answer[name].shape == (len(c), 1)
        np.testing.assert_allclose(answer["grad_l1"].reshape(-1), grad_l1, rtol=1e-3)
        assert answer["perturbation"].shape == c.shape
        np.testing.assert_allclose(answer["clean_score"].reshape(-1), clean, atol=1e-3)
        np.testing.assert_allclose(answer["adv_score"].reshape(-1), adv, atol=1e-3)
        assert float(np.abs(adv - clean).mean()) > 0.1  # the FGSM step moved the scores
        assert float(np.mean(np.round(answer["perturbation"] * 255) != np.round(delta * 255))) < 1e-3
