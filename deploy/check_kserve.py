"""Check KServe resources in Kubernetes YAML against the KServe Python SDK's models (offline).

    .venv-kserve/bin/python deploy/check_kserve.py MANIFEST.yaml [...]     (or - for stdin)

Every document of kind ``InferenceService`` is built, field by field, into the SDK's
``V1beta1InferenceService`` (its nested ``V1beta1*`` models and the ``kubernetes.client`` models they
use): each key must be a field of the model (its camelCase ``attribute_map`` name), each value of the
field's declared type, and the models' own client-side validation runs on construction (required
fields). Prints one JSON line per resource; exit 1 on the first document that does not fit.
It runs in its own venv (make kserve-install): the SDK's dependencies would change the project's.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import kserve.models
import kubernetes.client.models
import yaml

_LIST = re.compile(r"^[lL]ist\[(.+)\]$")  # the generators write list[X] and List[X]
_DICT = re.compile(r"^(?:dict\(\w+, (.+)\)|Dict\[\w+, (.+)\])$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


class ManifestError(ValueError):
    """A document that does not fit the SDK's model; the message names the path."""


def _model_class(name: str) -> type:
    for module in (kserve.models, kubernetes.client.models):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise ManifestError(f"no SDK model named {name}")


def build(type_name: str, value: Any, path: str) -> Any:
    """``value`` as an instance of the SDK type ``type_name`` (strict: unknown keys are errors)."""
    if type_name == "object":
        return value
    if type_name in _PRIMITIVES:
        is_bool = isinstance(value, bool)
        if not isinstance(value, _PRIMITIVES[type_name]) or (is_bool and type_name != "bool"):
            raise ManifestError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list")
        return [build(m.group(1), v, f"{path}[{i}]") for i, v in enumerate(value)]
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a mapping")
        value_type = m.group(1) or m.group(2)
        return {k: build(value_type, v, f"{path}.{k}") for k, v in value.items()}
    cls = _model_class(type_name)
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {type_name} mapping")
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json:
            raise ManifestError(f"{path}: {type_name} has no field '{key}'")
        attr = by_json[key]
        kwargs[attr] = build(cls.openapi_types[attr], item, f"{path}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the model's own validation (e.g. a required field is None)
        raise ManifestError(f"{path}: {exc}") from None


def check_document(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of an InferenceService document, None for other kinds; raises ManifestError."""
    if doc.get("kind") != "InferenceService":
        return None
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1":
        want = "serving.kserve.io/v1beta1"
        raise ManifestError(f"InferenceService apiVersion {doc.get('apiVersion')!r}: want {want}")
    isvc = build("V1beta1InferenceService", doc, "InferenceService")
    model = isvc.spec.predictor.model
    return {
        "kind": "InferenceService",
        "name": isvc.metadata.name,
        "namespace": isvc.metadata.namespace,
        "model_format": model.model_format.name if model else None,
        "runtime": model.runtime if model else None,
        "protocol_version": model.protocol_version if model else None,
        "storage_uri": model.storage_uri if model else None,
        "args": model.args if model else None,
        "gpus": (model.resources.limits or {}).get("nvidia.com/gpu") if model and model.resources else None,
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv:
        text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()  # noqa: SIM115
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            try:
                summary = check_document(doc)
            except ManifestError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                return 1
            if summary is not None:
                print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
