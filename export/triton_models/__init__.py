"""Triton Python-backend models, copied by export as ``<model>/<version>/model.py``.

Each file is a complete Triton Python model (``TritonPythonModel`` with ``initialize`` / ``execute``)
that runs inside Triton's Python-backend stub, in the project's virtual environment
(``EXECUTION_ENV_PATH``). They import ``triton_python_backend_utils`` (only present inside the stub),
so nothing here is imported by the project itself; ``export/triton_repository.py`` copies them:

- ``preprocess.py`` -> ``<name>_preprocess``: encoded image bytes -> evaluation crops (decode and
  preprocess with ``training.preprocessing``, the project's one preprocessing code).
- ``scorer.py``     -> ``<name>`` under ``configs/cpu.pbtxt``: the version's ``model.onnx`` through
  ONNX Runtime, for Triton builds without the onnxruntime backend (the PyPI wheel).
- ``postprocess.py`` -> ``<name>_postprocess``: crop scores -> one score per image (the gateway's
  mean of the crop scores, clamped to the score range).
- ``probe.py``      -> ``<name>_probe`` under ``configs/cpu.pbtxt``: the FGSM self-probe graph
  (export/probe_graph.py) through ONNX Runtime.
"""

SOURCES = {
    "preprocess": "preprocess.py",
    "scorer": "scorer.py",
    "postprocess": "postprocess.py",
    "probe": "probe.py",
}
