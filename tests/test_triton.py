"""The committed model repository in a real tritonserver (the PyPI wheel's, CPU config), on loopback.

One server for the module. Scores over gRPC and HTTP equal the gateway's embedded ONNX Runtime
scores for the same bytes; bad bytes get a per-request error and the server keeps serving; the
scorer's dynamic batcher merges concurrent requests; the metrics port counts inferences; the sync,
asyncio and CLI clients score real files and report bad ones.
"""

from __future__ import annotations

import asyncio
import csv
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients.triton_aio import AsyncTritonIQAClient
from clients.triton_client import TritonIQAClient
from clients.triton_common import BadImage, ModelUnavailable, RetryPolicy, ServerUnreachable, bytes_array
from export.triton_server import TritonServer, free_port
from serving.model_store import resolve_model_version
from tests.triton_fixtures import (
    MODEL_REPOSITORY,
    REPO_ROOT,
    TOL,
    bad_bytes,
    gateway_scores,
    photo_bytes,
    start_server,
)
from training.preprocessing import preprocess_bytes


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    triton = start_server()
    try:
        yield triton
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return photo_bytes()


@pytest.fixture(scope="module")
def expected(photos: dict[str, bytes]) -> dict[str, float]:
    return gateway_scores(photos)


def _grpc_image(client: grpcclient.InferenceServerClient, blobs: list[bytes]) -> np.ndarray:
    tensor = grpcclient.InferInput("image_bytes", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(bytes_array(blobs))
    return client.infer("iqa_image", [tensor]).as_numpy("score")


def test_ensemble_and_scorer_equal_the_gateway_over_grpc_and_http(
    server: TritonServer, photos: dict[str, bytes], expected: dict[str, float]
) -> None:
    names = list(photos)
    want = np.array([expected[n] for n in names])
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    got_grpc = _grpc_image(grpc, [photos[n] for n in names])  # one request, six images
    tensor = httpclient.InferInput("image_bytes", [len(names)], "BYTES")
    tensor.set_data_from_numpy(bytes_array([photos[n] for n in names]))
    got_http = http.infer("iqa_image", [tensor]).as_numpy("score")
    assert got_grpc.shape == (len(names),) and got_grpc.dtype == np.float32
    np.testing.assert_allclose(got_grpc, want, rtol=0, atol=TOL)
    np.testing.assert_allclose(got_http, want, rtol=0, atol=TOL)
    assert np.ptp(want) > 1.0, "the photos score alike: the comparison would prove little"

    # the scorer alone, on the gateway's crops: crop scores of the embedded ONNX Runtime
    model = resolve_model_version(MODEL_REPOSITORY, "iqa", "latest")
    crops = preprocess_bytes(photos["coffee.webp"], model.preprocess)
    from serving.backends.onnxruntime_backend import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend(model.model_path, model.info, intra_op_threads=1)
    ort.load()
    g_in = grpcclient.InferInput("image", list(crops.shape), "UINT8")
    g_in.set_data_from_numpy(crops)
    h_in = httpclient.InferInput("image", list(crops.shape), "UINT8")
    h_in.set_data_from_numpy(crops, binary_data=True)
    for out in (grpc.infer("iqa", [g_in]).as_numpy("score"), http.infer("iqa", [h_in]).as_numpy("score")):
        assert out.shape == (len(crops), 1)
        np.testing.assert_allclose(out.reshape(-1), ort.infer(crops), rtol=0, atol=TOL)


def test_bad_bytes_get_a_per_request_error_and_the_server_keeps_serving(
    server: TritonServer, photos: dict[str, bytes], expected: dict[str, float]
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    good = photos["chelsea.png"]

    def attempt(blobs: list[bytes]) -> np.ndarray | InferenceServerException:
        try:
            return _grpc_image(client, blobs)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:  # bad and good requests side by side
        jobs = [pool.submit(attempt, [data]) for data in bad_bytes().values()]
        jobs += [pool.submit(attempt, [good, bad_bytes()["garbage"]])]
        goods = [pool.submit(attempt, [good]) for _ in range(4)]
    for job in jobs:
        error = job.result()
        assert isinstance(error, InferenceServerException), error
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
        assert re.search(r"image \d of \d: (cannot decode image|empty image)", error.message()), (
            error.message()
        )
    for job in goods:
        np.testing.assert_allclose(job.result(), [expected["chelsea.png"]], atol=TOL)
    assert (
        client.is_server_live()
        and client.is_model_ready("iqa_image")
        and client.is_model_ready("iqa_preprocess")
    )
    np.testing.assert_allclose(_grpc_image(client, [good]), [expected["chelsea.png"]], atol=TOL)


def test_dynamic_batching_merges_concurrent_requests(server: TritonServer, photos: dict[str, bytes]) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    crop = preprocess_bytes(photos["rocket.jpg"], resolve_model_version(MODEL_REPOSITORY, "iqa").preprocess)[
        :1
    ]

    def one(_: int) -> float:
        tensor = grpcclient.InferInput("image", list(crop.shape), "UINT8")
        tensor.set_data_from_numpy(crop)
        return float(
            grpcclient.InferenceServerClient(server.grpc_url).infer("iqa", [tensor]).as_numpy("score")[0, 0]
        )

    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(one, range(64)))
    assert np.ptp(scores) < 1e-4
    stats = client.get_inference_statistics("iqa", as_json=True)["model_stats"]
    sizes = {int(b["batch_size"]) for s in stats for b in s.get("batch_stats", [])}
    assert max(sizes) > 1, f"no batch larger than one request: {sorted(sizes)}"
    executions = sum(int(s["execution_count"]) for s in stats)
    inferences = sum(int(s["inference_count"]) for s in stats)
    assert executions < inferences


def _inference_count(server: TritonServer, model: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = rf'^nv_inference_count\{{model="{model}",version="\d+"\}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def test_metrics_count_inferences(server: TritonServer, photos: dict[str, bytes]) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = _inference_count(server, "iqa_image"), _inference_count(server, "iqa")
    _grpc_image(client, [photos["astronaut.jpg"], photos["coffee.webp"]])
    time.sleep(0.2)
    after = _inference_count(server, "iqa_image"), _inference_count(server, "iqa")
    assert after[0] >= before[0] + 1  # one ensemble request (Triton counts a non-batching request as one)
    assert after[1] >= before[1] + 10  # ten crops through the scorer


def test_sync_and_async_clients(
    server: TritonServer, photos: dict[str, bytes], expected: dict[str, float]
) -> None:
    names = list(photos)
    with TritonIQAClient(server.grpc_url, batch_size=4) as client:
        latest = resolve_model_version(MODEL_REPOSITORY, "iqa", "latest").version
        assert client.spec().images_per_request == 6 and client.spec().versions == (latest,)
        np.testing.assert_allclose(
            client.score_bytes([photos[n] for n in names]), [expected[n] for n in names], atol=TOL
        )
        with pytest.raises(BadImage, match="cannot decode image"):
            client.score_bytes([bad_bytes()["garbage"]])
    with TritonIQAClient(server.grpc_url, model="iqa", model_repository=MODEL_REPOSITORY) as tensors:
        assert abs(tensors.score_image(photos["rocket.jpg"]) - expected["rocket.jpg"]) < TOL
        with pytest.raises(BadImage):
            tensors.score_image(b"nope")

    async def run() -> list:
        async with AsyncTritonIQAClient(server.grpc_url, batch_size=3) as client:
            items = [(n, photos[n]) for n in names] + [("bad", b"xx"), ("unreadable", OSError("denied"))]
            return await client.score_items(items, concurrency=3)

    results = asyncio.run(run())
    assert [r.key for r in results][-2:] == ["bad", "unreadable"]
    for r in results[:-2]:
        assert r.ok and abs(r.score - expected[r.key]) < TOL
    assert "cannot decode image" in results[-2].error and "denied" in results[-1].error


def test_client_errors(server: TritonServer) -> None:
    with TritonIQAClient(server.grpc_url, model="no_such_model") as client, pytest.raises(ModelUnavailable):
        client.spec()
    nobody = f"127.0.0.1:{free_port()}"
    with TritonIQAClient(nobody, retry=RetryPolicy(attempts=3, initial_backoff_s=0.2, jitter=0)) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="cannot reach Triton"):
            client.score_bytes([b"x"])
        assert time.monotonic() - started >= 0.2 + 0.4 - 0.05  # two backoffs before giving up


def test_cli_scores_a_folder_and_a_csv(
    server: TritonServer, photos: dict[str, bytes], expected: dict[str, float], tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "scores.csv"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "clients" / "triton_client.py"),
        str(folder),
        "--url",
        server.grpc_url,
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one file failed
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert set(rows) == set(photos) | {"broken.jpg"}
    for name, score in expected.items():
        assert abs(float(rows[name]["score"]) - score) < TOL and rows[name]["error"] == ""
    assert "cannot decode image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["score"] == ""
    assert "scored 6 of 7 images" in done.stderr

    manifest = tmp_path / "list.csv"
    manifest.write_text("path,mos\nimages/chelsea.png,1\nimages/rocket.jpg,2\n")
    done = subprocess.run(
        [
            *cmd[:2],
            str(manifest),
            "--url",
            server.grpc_url,
            "--model",
            "iqa",
            "--no-progress",
            "--model-repository",
            str(MODEL_REPOSITORY),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert [Path(r["path"]).name for r in rows] == ["chelsea.png", "rocket.jpg"]
    assert abs(float(rows[1]["score"]) - expected["rocket.jpg"]) < TOL

    unreachable = subprocess.run(
        [*cmd[:3], "--url", f"127.0.0.1:{free_port()}", "--retries", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 2 and "error: cannot reach Triton" in unreachable.stderr
    unknown = subprocess.run(
        [*cmd[:3], "--url", server.grpc_url, "--model", "nope_image"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "model 'nope_image'" in unknown.stderr


def test_bench_measures_both_targets_briefly(server: TritonServer) -> None:
    """bench/triton.py against this server and in-process ONNX Runtime, a fraction of a second a cell."""
    from bench.triton import InProcess, get_args_parser, measure, saturation_ratios, table

    args = get_args_parser().parse_args(["--seconds", "2", "--concurrency", "1", "2", "--json", "x.json"])
    assert (args.seconds, args.concurrency, args.model) == (2.0, [1, 2], ["iqa", "iqa_image"])
    inproc = InProcess(MODEL_REPOSITORY, intra_op_threads=1)
    rows = measure(server.grpc_url, inproc, ["iqa", "iqa_image"], [1, 2], seconds=0.3, side=256)
    assert len(rows) == 8 and all(r["requests"] and not r["errors"] for r in rows)
    text = table(rows)
    assert text.count("\n| iqa") == 4 and "Triton ÷ in-process" in text
    ratios = saturation_ratios(rows)
    assert set(ratios) == {"iqa", "iqa_image"} and all(r["ratio"] > 0 for r in ratios.values())
