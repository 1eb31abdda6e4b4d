"""Unit tests of the NT regulariser (training/nt.py): Eq. 6/7 on models with known gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from training.nt import NTConfig, finite_difference_norm, input_grad_l1, nt_loss


class Linear(nn.Module):
    """f(x) = wᵀx + b on N×3×H×W inputs."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=g) * 0.1)
        self.b = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).mean((2, 3))
        return 50 + 10 * self.fc(h).squeeze(1)


def test_fd_norm_equals_l1_norm_of_weights_on_linear_model() -> None:
    shape = (3, 8, 8)
    model = Linear(shape)
    x = torch.full((4, *shape), 0.5)  # far from the [0, 1] clamp for h = 0.01
    x.requires_grad_(True)
    pred = model(x)
    (g,) = torch.autograd.grad(pred.sum(), x, retain_graph=True)
    fd = finite_difference_norm(model, x, pred, torch.sign(g), h=0.01)
    expected = model.w.detach().abs().sum()
    torch.testing.assert_close(fd.detach(), expected.expand(4), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(input_grad_l1(model, x), expected.expand(4), rtol=1e-5, atol=1e-4)


def test_exact_mode_squares_the_l1_norm() -> None:
    shape = (3, 4, 4)
    model = Linear(shape)
    x = torch.full((2, *shape), 0.5)
    out = nt_loss(model, x, torch.full((2,), 50.0), nn.MSELoss(), NTConfig(lam=1.0, mode="exact"))
    expected = model.w.detach().abs().sum() ** 2
    torch.testing.assert_close(out.reg, expected, rtol=1e-5, atol=1e-3)


def _param_grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def test_lambda_zero_matches_plain_training_gradients() -> None:
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([20.0, 40.0, 60.0, 80.0])
    plain, nt = SmallNet(), SmallNet()
    nn.MSELoss()(plain(x), y).backward()
    out = nt_loss(nt, x, y, nn.MSELoss(), NTConfig(lam=0.0))
    out.loss.backward()
    assert float(out.reg) == 0.0
    for a, b in zip(_param_grads(plain), _param_grads(nt), strict=True):
        torch.testing.assert_close(a, b)


def test_regulariser_gradient_flows_through_both_forwards() -> None:
    """d/dθ of |f(x+hd) − f(x)|² must use both terms: dropping either changes the gradient."""
    model = SmallNet()
    x = torch.rand(3, 3, 16, 16)
    h = 0.01
    xg = x.clone().requires_grad_(True)
    pred = model(xg)
    (g,) = torch.autograd.grad(pred.sum(), xg, retain_graph=True)
    d = torch.sign(g)
    reg = finite_difference_norm(model, xg, pred, d, h).pow(2).mean()
    full = torch.autograd.grad(reg, list(model.parameters()))

    x_pert = (x + h * d).clamp(0, 1)
    only_pert = torch.autograd.grad(
        ((model(x_pert) - model(x).detach()) / h).abs().pow(2).mean(), list(model.parameters())
    )
    only_clean = torch.autograd.grad(
        ((model(x_pert).detach() - model(x)) / h).abs().pow(2).mean(), list(model.parameters())
    )
    for gf, gp, gc in zip(full, only_pert, only_clean, strict=True):
        torch.testing.assert_close(gf, gp + gc, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(gf, gp) for gf, gp in zip(full, only_pert, strict=True))
    assert any(not torch.allclose(gf, gc) for gf, gc in zip(full, only_clean, strict=True))


def test_nt_step_reduces_gradient_norm() -> None:
    """A few NT steps with a large λ shrink ‖∇ₓf‖₁ far more than plain steps do."""
    x = torch.rand(8, 3, 16, 16)
    y = torch.full((8,), 50.0)

    def run(lam: float) -> float:
        model = SmallNet()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(30):
            opt.zero_grad()
            nt_loss(model, x, y, nn.MSELoss(), NTConfig(lam=lam, h=0.01)).loss.backward()
            opt.step()
        return float(input_grad_l1(model, x).mean())

    assert run(1e-1) < 0.5 * run(0.0)


def test_reg_fraction_uses_part_of_batch() -> None:
    model = Linear((3, 4, 4))
    x = torch.full((8, 3, 4, 4), 0.5)
    out = nt_loss(model, x, torch.full((8,), 50.0), nn.MSELoss(), NTConfig(lam=1.0, reg_fraction=0.25))
    torch.testing.assert_close(out.reg, model.w.detach().abs().sum() ** 2, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kwargs", [{"lam": -1}, {"h": 0}, {"h": 2}, {"mode": "nope"}, {"reg_fraction": 0}])
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NTConfig(**kwargs)


def test_model_registry_refuses_duplicates_and_drops_none() -> None:
    from training.models import create_model, list_models, register_model

    assert "effnet_lite0" in list_models("effnet_*")
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def effnet_lite0() -> None:
            return None

    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    model = create_model("effnet_lite0", backbone_weights="none", head_hidden=None)
    assert model.head.fc1.out_features == 128  # None did not override the default


def test_cli_overrides_read_exponent_floats_as_numbers() -> None:
    from training.utils import parse_overrides

    got = parse_overrides(["nt.lam=1e-05", "nt.h=0.01", "optim.lr=3E-4", "seed=1", "data.manifest=a/1e5.csv"])
    assert got == {"nt.lam": 1e-05, "nt.h": 0.01, "optim.lr": 3e-4, "seed": 1, "data.manifest": "a/1e5.csv"}
    assert isinstance(got["nt.lam"], float)


@pytest.mark.parametrize("mode", ["fd", "exact"])
def test_regulariser_under_autocast_matches_float32(mode: str) -> None:
    """AMP must not quantise the difference quotient: bfloat16 (CPU autocast) stores a score of ~50
    in steps of 0.25, so at h = 0.01 a low-precision f(x + h·d) − f(x) would be off by ~25 per image."""
    model = SmallNet()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.full((4,), 50.0)
    cfg = NTConfig(lam=1.0, h=0.01, mode=mode)  # type: ignore[arg-type]
    ref = nt_loss(model, x, y, nn.L1Loss(), cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = nt_loss(model, x, y, lambda p, t: nn.functional.l1_loss(p.float(), t), cfg)
    assert amp.reg.dtype == torch.float32
    torch.testing.assert_close(amp.reg, ref.reg, rtol=0.02, atol=1e-3)
    amp.loss.backward()  # the float32 regulariser still reaches the parameters
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- mutation testing (make mutation, docs/MUTATION.md): values the NT objective must return ------


def _grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_nt_output_is_loss_iqa_reg_and_predictions(lam: float) -> None:
    """loss = L_IQA + λ·reg (a plus: the regulariser is penalised, never rewarded), iqa_loss is
    L_IQA(f(x), y) and pred is f(x), detached, for the baseline and for NT."""
    model = SmallNet()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([20.0, 40.0, 60.0, 80.0])
    out = nt_loss(model, x, y, nn.MSELoss(), NTConfig(lam=lam))
    with torch.no_grad():
        pred = model(x)
    torch.testing.assert_close(out.pred, pred)
    torch.testing.assert_close(out.iqa_loss, nn.MSELoss()(pred, y))
    assert not out.pred.requires_grad and not out.iqa_loss.requires_grad and not out.reg.requires_grad
    assert float(out.reg) > 0.0 if lam else float(out.reg) == 0.0
    torch.testing.assert_close(out.loss.detach(), out.iqa_loss + lam * out.reg)


@pytest.mark.parametrize(("batch", "fraction", "n_reg"), [(6, 0.5, 3), (6, 0.1, 1), (5, 1.0, 5)])
def test_reg_fraction_regularises_the_first_round_fraction_images(
    batch: int, fraction: float, n_reg: int
) -> None:
    """reg = mean over the first max(1, round(fraction·N)) images of ‖∇ₓf‖₁² (exact mode), on images
    whose norms differ, so taking another count of images changes the value."""
    model = SmallNet()
    x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    x[:, :, :8] *= torch.linspace(0.1, 1.0, batch).view(batch, 1, 1, 1)  # unequal per-image norms
    norms = input_grad_l1(model, x)
    assert len({round(float(v), 3) for v in norms}) == batch
    cfg = NTConfig(lam=1.0, mode="exact", reg_fraction=fraction)
    out = nt_loss(model, x, torch.full((batch,), 50.0), nn.MSELoss(), cfg)
    torch.testing.assert_close(out.reg, norms[:n_reg].pow(2).mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("amp", [False, True])
def test_exact_mode_regulariser_gradient_reaches_the_parameters(amp: bool) -> None:
    """Eq. 5 penalises ‖∇ₓf‖₁², so the input gradient must keep its graph (create_graph): the
    parameter gradient of the NT loss minus that of L_IQA is the gradient of the fp32 regulariser,
    also under autocast, where the regulariser's forward runs again in float32."""
    model = SmallNet()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = torch.full((3,), 50.0)

    def crit(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.l1_loss(p.float(), t)

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = nt_loss(model, x, y, crit, NTConfig(lam=1.0, mode="exact"))
        plain = crit(model(x.clone().requires_grad_(True)), y)
    got = [a - b for a, b in zip(_grads(out.loss, model), _grads(plain, model), strict=True)]
    want = _grads(input_grad_l1(model, x, create_graph=True).pow(2).mean(), model)
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.02 * scale)


def test_config_bounds_are_inclusive_where_documented() -> None:
    """h and reg_fraction live in (0, 1]: 1 is allowed, anything above is not."""
    assert NTConfig(h=1.0).h == 1.0
    assert NTConfig(reg_fraction=1.0).reg_fraction == 1.0
    for kwargs in ({"h": 1.001}, {"reg_fraction": 1.5}, {"h": -0.01}, {"reg_fraction": -0.5}):
        with pytest.raises(ValueError):
            NTConfig(**kwargs)
    assert NTConfig(lam=0.0).enabled is False and NTConfig(lam=1e-9).enabled is True


def test_fd_norm_steps_by_h_times_d_and_a_zero_direction_does_not_move() -> None:
    """x + h·d: where sign(∇ₓf) is 0 the pixel stays put, so d = 0 gives a zero norm; d = ±1 gives
    |wᵀd| on a linear model."""
    shape = (3, 4, 4)
    model = Linear(shape)
    x = torch.full((2, *shape), 0.5)
    pred = model(x)
    zero = finite_difference_norm(model, x, pred, torch.zeros_like(x), 0.01)
    assert zero.tolist() == [0.0, 0.0]
    d = torch.sign(model.w.detach()).expand_as(x)
    torch.testing.assert_close(finite_difference_norm(model, x, pred, d, 0.01).detach(),
                               model.w.detach().abs().sum().expand(2), rtol=1e-3, atol=1e-3)


def test_input_grad_l1_keeps_no_graph_unless_asked() -> None:
    """The reporting path (gradient norms of the gate) must not keep the double-backward graph."""
    model = SmallNet()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    plain = input_grad_l1(model, x)
    assert not plain.requires_grad
    graph = input_grad_l1(model, x, create_graph=True)
    assert graph.requires_grad
    torch.testing.assert_close(plain, graph.detach())
