"""The FGSM self-probe graph (export/probe_graph.py, export/probe_export.py): it is the gate's FGSM, in
ONNX Runtime, with a dynamic batch; the committed ``iqa_probe`` matches the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import uint8_nhwc_to_float
from export.probe_export import load_version_model, parity_crops, write_probe_version
from export.probe_graph import (
    OUTPUT_NAMES,
    ProbeContractError,
    check_probe_contract,
    check_probe_parity,
    export_probe_onnx,
)
from export.probe_triton import render_probe_config
from tests.probe_fixtures import random_crops, tiny_effnet
from training.gate.attacks import create_attack
from training.gate.attacks.fgsm import fgsm_probe
from training.gate.identity import weights_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
CONFIGS = {"default": "config.pbtxt", "gpu": "configs/gpu.pbtxt", "cpu": "configs/cpu.pbtxt"}


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.onnx"
    export_probe_onnx(tiny_effnet(), path)
    return path


def _run(path: Path, crops: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {"image": crops})


def test_fgsm_probe_is_the_gates_fgsm() -> None:
    """fgsm_probe's perturbation is what the registry's FGSM delivers (bit for bit), and its scores are
    the served scores of the clean and the delivered images; mse has no gradient at x: no change."""
    model = tiny_effnet()
    x = uint8_nhwc_to_float(torch.from_numpy(random_crops(6)))
    clean, adv, delta, grad_l1 = fgsm_probe(model, x)
    x_adv = create_attack("fgsm")(model, x)
    assert torch.equal(x + delta, x_adv)
    xi = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xi).sum(), xi)  # |∇ L_mid| = |∇ f| whichever side of the midpoint
    torch.testing.assert_close(grad_l1, grad.abs().flatten(1).sum(1))
    assert torch.equal(clean, model.score(x).detach())
    assert torch.allclose(adv, model.score(x_adv).detach(), atol=1e-5)
    assert float(delta.abs().max()) == pytest.approx(1 / 255, abs=1e-6)  # ε = 0.005 -> one 8-bit level
    assert float((adv - clean).abs().mean()) > 0.01  # the step moves the score
    assert float(fgsm_probe(model, x, objective="mse")[2].abs().max()) == 0.0


def test_onnx_probe_matches_the_gates_fgsm_for_any_batch(tiny_probe: Path) -> None:
    """ONNX Runtime vs the registry's FGSM in torch: scores within 1e-3, the same perturbation, for
    batches of 1 and 7 (the batch axis is dynamic although the graph was traced with 2)."""
    model = tiny_effnet()
    for n in (1, 7):
        crops = random_crops(n, seed=n)
        clean, adv, delta, grad_l1 = _run(tiny_probe, crops)
        x = uint8_nhwc_to_float(torch.from_numpy(crops))
        x_adv = create_attack("fgsm")(model, x)
        assert clean.shape == adv.shape == grad_l1.shape == (n,) and delta.shape == (n, 64, 64, 3)
        np.testing.assert_allclose(grad_l1, fgsm_probe(model, x)[3].numpy(), rtol=1e-4)
        np.testing.assert_allclose(clean, model.score(x).detach().numpy(), atol=1e-3)
        np.testing.assert_allclose(adv, model.score(x_adv).detach().numpy(), atol=1e-3)
        np.testing.assert_allclose(delta, (x_adv - x).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    report = check_probe_parity(model, tiny_probe, random_crops(5, seed=3), crops_per_image=5)
    assert report.adv_max_abs_diff <= 1e-3 and report.perturbation_mismatch == 0.0


def test_parity_check_rejects_another_models_graph(tiny_probe: Path) -> None:
    with pytest.raises(ProbeContractError, match="disagrees"):
        check_probe_parity(tiny_effnet(seed=1), tiny_probe, random_crops(3))


def test_contract_check_rejects_the_scorer_graph(tiny_probe: Path) -> None:
    check_probe_contract(tiny_probe, 64)
    with pytest.raises(ProbeContractError):
        check_probe_contract(tiny_probe, 224)  # other crop size
    with pytest.raises(ProbeContractError, match="expected"):
        check_probe_contract(REPOSITORY / "iqa" / "2" / "model.onnx", 224)


def test_a_probe_version_is_never_overwritten_without_force(tmp_path: Path) -> None:
    model = tiny_effnet()
    crops = random_crops(2)
    target = write_probe_version(tmp_path, "iqa", 3, model, crops=crops)
    assert sorted(p.name for p in target.iterdir()) == ["metadata.json", "model.onnx", "model.py"]
    with pytest.raises(FileExistsError):
        write_probe_version(tmp_path, "iqa", 3, model, crops=crops)
    for variant, path in CONFIGS.items():
        assert (tmp_path / "iqa_probe" / path).read_text() == render_probe_config(
            "iqa_probe", crop_size=64, variant=variant
        )


def test_committed_probe_is_the_shipped_models_fgsm() -> None:
    """model_repository/iqa_probe/2: its configs are what export writes, it was made from the weights
    iqa/2 was gated with, and on two crops of a photo it gives the gate's FGSM scores (torch, from
    iqa/2's TorchScript weights) within 1e-3."""
    probe_dir = REPOSITORY / "iqa_probe"
    meta = json.loads((probe_dir / "2" / "metadata.json").read_text())
    scorer_meta = json.loads((REPOSITORY / "iqa" / "2" / "metadata.json").read_text())
    assert meta["scorer"]["weights_sha256"] == scorer_meta["gate"]["weights_sha256"]
    assert meta["probe"]["eps"] == 0.005 and meta["probe"]["objective"] == "mid"
    assert meta["parity"]["adv_image_max_abs_diff"] <= 1e-3
    crop = scorer_meta["preprocess"]["crop_size"]
    for variant, path in CONFIGS.items():
        expected = render_probe_config("iqa_probe", crop_size=crop, variant=variant)
        assert (probe_dir / path).read_text() == expected
    check_probe_contract(probe_dir / "2" / "model.onnx", crop)
    model = load_version_model(REPOSITORY / "iqa" / "2")
    assert weights_sha256(model) == meta["scorer"]["weights_sha256"]
    crops = parity_crops(model.preprocess_cfg, n_images=1)[:2]
    report = check_probe_parity(model, probe_dir / "2" / "model.onnx", crops, crops_per_image=2)
    assert report.clean_max_abs_diff <= 1e-3 and report.adv_image_max_abs_diff <= 1e-3


def test_traced_copy_folds_batch_norm_and_keeps_function_and_gradient() -> None:
    """The copy the probe traces has no batch norm and no AdaptiveAvgPool2d left, and the same output
    and input gradient as the model (its ReLU6 masks the gradient from the saved output)."""
    from torch import nn

    from export.probe_rewrites import trace_friendly

    model = tiny_effnet()
    clone = trace_friendly(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.ReLU6)) for m in clone.modules())
    x = uint8_nhwc_to_float(torch.from_numpy(random_crops(4, seed=5)))
    grads = []
    for net in (model, clone):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        (grad,) = torch.autograd.grad(out.sum(), xi)
        grads.append((out.detach(), grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-3)
    assert any(p.requires_grad for p in model.parameters())  # the model itself is left alone


class _SamePadded(torch.nn.Conv2d):
    """EfficientNet-Lite's TF-"SAME" conv: a ``static_padding`` ZeroPad2d, then a conv with no padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pads: tuple[int, ...], groups: int) -> None:
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.static_padding = torch.nn.ZeroPad2d(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


def test_traced_copy_folds_symmetric_same_padding_into_the_conv_and_keeps_the_asymmetric_one() -> None:
    """A stride-1 ZeroPad2d(1) + 3x3 conv becomes one Conv2d(padding=1) (no crop in its backward); the
    stride-2 (0, 1, 0, 1) one stays; output and input gradient are unchanged."""
    from torch import nn

    from export.probe_rewrites import trace_friendly

    torch.manual_seed(0)
    net = nn.Sequential(
        _SamePadded(3, 8, 3, 1, (1, 1, 1, 1), 1), nn.ReLU6(),
        _SamePadded(8, 8, 3, 2, (0, 1, 0, 1), 8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1), nn.Flatten(0),
    ).eval()  # fmt: skip
    clone = trace_friendly(net)
    assert type(clone[0]) is nn.Conv2d and clone[0].padding == (1, 1)
    assert isinstance(clone[2], _SamePadded) and clone[2].static_padding.padding == (0, 1, 0, 1)
    x = torch.rand(3, 3, 16, 16)
    outputs = []
    for model in (net, clone):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        outputs.append((out.detach(), torch.autograd.grad(out.sum(), xi)[0]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=1e-7, rtol=1e-5)
