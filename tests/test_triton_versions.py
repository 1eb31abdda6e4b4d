"""Explicit model control: a second version is loaded and the ensemble switched to it under load.

A copy of the committed repository gets a new version N+1 of the scorer above its latest N, written
the way export writes it (``iqa/N+1`` plus ``write_step_versions`` and ``write_family_configs``,
which pin the ensemble to N+1). The new version is version 1's network with 'native' sizing, so it
scores a large photo differently from N. While four threads score that photo through ``iqa_image``,
the steps are loaded (N and N+1 side by side, ``latest: 2``) and then the ensemble: no request
fails, every answer is N's or N+1's score, and once the ensemble is reloaded every answer is N+1's,
which is the gateway's score for ``IQA_MODEL_VERSION=latest`` on the same repository.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.triton_common import bytes_array
from export.triton_repository import write_family_configs, write_step_versions
from tests.triton_fixtures import TOL, copy_repository, gateway_scores, photo_bytes, start_server
from training.preprocessing import PreprocessConfig


def _latest(repo: Path) -> int:
    return max(int(p.name) for p in (repo / "iqa").iterdir() if p.name.isdigit())


def _add_version(repo: Path) -> int:
    """A new version above the latest: version 1's weights, re-sized natively (it scores differently
    from the latest, so the switch is visible)."""
    new = _latest(repo) + 1
    v1, staging = repo / "iqa" / "1", repo / "iqa" / f".staging-{new}"
    shutil.copytree(v1, staging)
    meta = json.loads((staging / "metadata.json").read_text())
    meta["version"] = new
    meta["preprocess"]["sizing"] = "native"
    (staging / "metadata.json").write_text(json.dumps(meta))
    staging.rename(repo / "iqa" / str(new))
    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    write_step_versions(repo, "iqa", new, cfg)
    write_family_configs(repo, "iqa", version=new, cfg=cfg)
    return new


def test_load_a_second_version_and_switch_under_load(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path)
    photo = photo_bytes()["astronaut_1400x1000.jpg"]
    server = start_server(repo, model_control="explicit", load_models=["*"])
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        old = _latest(repo)
        v1 = gateway_scores({"p": photo}, old, repo)["p"]

        def score() -> float:
            tensor = grpcclient.InferInput("image_bytes", [1], "BYTES")
            tensor.set_data_from_numpy(bytes_array([photo]))
            return float(
                grpcclient.InferenceServerClient(server.grpc_url)
                .infer("iqa_image", [tensor])
                .as_numpy("score")[0]
            )

        assert abs(score() - v1) < TOL
        new = _add_version(repo)
        v2 = gateway_scores({"p": photo}, "latest", repo)["p"]
        assert abs(v2 - v1) > 0.05, "versions 1 and 2 score alike: the switch would be invisible"

        answers: list[tuple[float, float]] = []
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    answers.append((time.monotonic(), score()))
                except InferenceServerException as exc:
                    failures.append(f"{exc.status()} {exc.message()}")

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        for model in ("iqa_preprocess", "iqa_postprocess", "iqa"):
            client.load_model(model)
        assert {
            m["version"]
            for m in client.get_model_repository_index(as_json=True)["models"]
            if m["name"] == "iqa" and m.get("state") == "READY"
        } == {str(old), str(new)}
        client.load_model("iqa_image")
        switched = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()

        assert not failures, failures[:5]
        assert len(answers) > 8
        for _, s in answers:
            assert min(abs(s - v1), abs(s - v2)) < TOL, (s, v1, v2)
        late = [s for t, s in answers if t > switched + 0.2]
        assert late and np.allclose(late, v2, atol=TOL)
        assert abs(score() - v2) < TOL
        assert (
            client.get_model_config("iqa_image", as_json=True)["config"]["parameters"]["scorer_version"][
                "string_value"
            ]
            == str(new)
        )
    finally:
        server.stop()
