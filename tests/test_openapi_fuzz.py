"""schemathesis against the live OpenAPI schema of a real uvicorn gateway (tiny model).

Every operation in ``/openapi.json`` is called with generated requests, positive (schema-valid:
real images from the strategy registered for the image media types, since JSON Schema cannot say
"a decodable image") and negative (schema-violating). Checks: no 5xx, every status and content type
declared, every body valid against its declared schema (errors included: ``ErrorBody``), valid data
accepted, invalid data rejected.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import checks

from tests.conftest import run_gateway

MAX_EXAMPLES = 60
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.positive_data_acceptance,
    checks.negative_data_rejection,
]
CALLS: Counter[str] = Counter()


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A decodable image of 32..96 px a side in one of the formats /score takes."""
    width, height = draw(st.integers(32, 96)), draw(st.integers(32, 96))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    fmt = draw(st.sampled_from(("PNG", "JPEG", "WEBP")))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


schemathesis.openapi.media_type("image/*", images(), aliases=["application/octet-stream", "image/png"])


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    """A real gateway on a tiny model that has its FGSM probe, so ``?probe=true`` is served too."""
    from tests.probe_fixtures import write_probe_repository

    repository = write_probe_repository(tmp_path_factory.mktemp("openapi_fuzz"))
    with run_gateway(repository, env={"IQA_ORT_INTRA_OP_THREADS": "1"}) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_api_conforms_to_its_schema(
    live_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    """Every operation, ``MAX_EXAMPLES`` generated requests each (the pytest plugin of schemathesis
    does not load under this pytest, so hypothesis drives each operation's strategy directly)."""
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /score", "GET /readyz"}
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            CALLS[f"{mode.value} {case.method} {case.path} {response.status_code}"] += 1

        try:
            call()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has no bad input
            assert mode is schemathesis.GenerationMode.NEGATIVE and not operation.body, operation.path
            assert not any(True for _ in operation.iter_parameters()), operation.path
    print(f"schemathesis {mode.value}:", {k: v for k, v in sorted(CALLS.items()) if k.startswith(mode.value)})
