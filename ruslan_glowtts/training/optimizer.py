"""FlatRAdam: Coqui's RAdam maths on the whole model at once, with a skip decided on the device.

Coqui's RAdam (TTS/utils/radam.py, GlowTTS's optimizer) steps its 507 parameter tensors one by one:
~6,000 CUDA kernel launches and ~46 ms per step on an H200 at batch 32 (docs/GPU.md), where the
GPU itself needs well under a millisecond for the arithmetic. FlatRAdam keeps every parameter,
gradient and moment as a view into one flat buffer each (as apex's and DeepSpeed's contiguous
optimizers do), so one step is about fifteen kernels over the whole model, whatever its size.

The maths are Coqui's, step for step: moments with betas (0.9, 0.998), the rectification term
from the step count (SGD-like update before it is defined, step 6 with beta2 0.998), decoupled
weight decay (p -= lr * wd * p, applied before the update, as Coqui's code does), eps outside
the square root. The step-dependent scalars are computed on the device in float64, because the
step count lives there (below). tests/test_optimizer.py checks the result against Coqui's RAdam.

The guard's skip happens on the device, the way GradScaler's found-inf works: step(apply=flag)
with a boolean device scalar applies the update when the flag is true and leaves weights, moments
and step count bit-for-bit unchanged when it is false, without the host ever reading the flag. A
non-finite gradient of a skipped update never touches the state (it is replaced by zeros first).

Requirements it relies on: all parameters on one device in float32 (the kit trains in fp32 or
bf16 autocast, whose master weights are fp32), parameters not moved after construction (module
.to() would replace the views), and gradients accumulated in place (autograd does, once .grad is
set). zero_grad() zeroes the flat gradient instead of dropping it. A gradient replaced by someone
else (p.grad = tensor) is detected and copied back into the flat buffer (rebind_gradients).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("flat", "coqui")  # config `radam_impl`: the kit's FlatRAdam, or Coqui's own RAdam
CPU_CHUNK = 1 << 18  # elements per slice of the host-controlled update (1 MB of float32: cache-sized)


class FlatRAdam(torch.optim.Optimizer):
    """Coqui's RAdam (degenerated_to_sgd=True) over flat buffers; step(apply=...) skips on the device."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        host_control: bool | None = None,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid RAdam settings: lr {lr}, eps {eps}, betas {betas}")
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("FlatRAdam got no trainable parameters")
        devices = {p.device for p in params}
        dtypes = {p.dtype for p in params}
        if len(devices) != 1 or dtypes != {torch.float32}:
            raise ValueError(f"FlatRAdam needs float32 parameters on one device (found {dtypes} on {devices})")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        if len(self.param_groups) != 1:
            raise ValueError("FlatRAdam takes one parameter group")
        self._params: list[torch.nn.Parameter] = list(self.param_groups[0]["params"])
        device = self._params[0].device
        sizes = [p.numel() for p in self._params]
        total = sum(sizes)
        self._offsets = [0]
        for size in sizes:
            self._offsets.append(self._offsets[-1] + size)
        # host_control: the skip and the step size are decided on the host, with Coqui's fused ops on
        # cache-sized slices: the default on a CPU, where reading a flag costs nothing and whole-buffer
        # passes with 115 MB temporaries were 5x slower than Coqui's per-tensor loop. On a GPU the
        # whole buffer is updated at once and the skip is decided on the device (no host sync).
        self.host_control = host_control_default(device) if host_control is None else host_control
        chunk = CPU_CHUNK if self.host_control else total
        self._chunks = [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
        self.flat_param = torch.empty(total, device=device, dtype=torch.float32)
        self.flat_grad = torch.zeros(total, device=device, dtype=torch.float32)
        self.exp_avg = torch.zeros(total, device=device, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(total, device=device, dtype=torch.float32)
        # Updates applied so far; float64 so that the rectification maths match Coqui's Python floats.
        self.step_count = torch.zeros((), device=device, dtype=torch.float64)
        with torch.no_grad():
            for p, view in zip(self._params, self._views(self.flat_param), strict=True):
                view.copy_(p.detach())
                p.data = view
        self.rebind_gradients()
        self._bind_state()
        self._steps_called = 0

    # -- views ---------------------------------------------------------------------------------
    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        bounds = zip(self._offsets[:-1], self._offsets[1:], strict=True)
        return [flat[a:b].view_as(p) for p, (a, b) in zip(self._params, bounds, strict=True)]

    def _bind_state(self) -> None:
        """Per-parameter state (views) so that state_dict() has the usual RAdam layout."""
        for p, m, v in zip(self._params, self._views(self.exp_avg), self._views(self.exp_avg_sq), strict=True):
            self.state[p] = {"step": self.step_count, "exp_avg": m, "exp_avg_sq": v}

    def rebind_gradients(self) -> int:
        """Point every p.grad at its slice of the flat gradient again; a gradient someone replaced
        (or set to None) is copied in first. Returns how many had to be re-bound."""
        rebound = 0
        with torch.no_grad():
            for p, view in zip(self._params, self._views(self.flat_grad), strict=True):
                grad = p.grad
                if grad is not None and grad.data_ptr() == view.data_ptr() and grad.shape == view.shape:
                    continue
                if grad is None:
                    view.zero_()
                else:
                    view.copy_(grad)
                p.grad = view
                rebound += 1
        return rebound

    def _check_gradients(self) -> None:
        # Cheap (pointer compares on the host), so done on the first steps and every 1000th.
        if self._steps_called < 3 or self._steps_called % 1000 == 0:
            rebound = self.rebind_gradients()
            if rebound and self._steps_called > 0:
                logger.warning(
                    " ! FlatRAdam: %d gradients had been replaced outside the flat buffer; copied back", rebound
                )

    # -- the step ------------------------------------------------------------------------------
    def grad_norm(self) -> torch.Tensor:
        """The L2 norm of the whole gradient (the pre-clip norm): one reduction, no host sync."""
        self._check_gradients()
        return torch.linalg.vector_norm(self.flat_grad)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.flat_grad.zero_()

    @torch.no_grad()
    def clip_(self, total_norm: torch.Tensor, max_norm: float) -> None:
        """torch.nn.utils.clip_grad_norm_'s scaling (max_norm / (norm + 1e-6), at most 1), given the
        norm already computed; a non-finite norm leaves the gradient alone (its update is skipped)."""
        if max_norm <= 0:
            return
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        coef = torch.where(torch.isfinite(coef), coef, torch.ones_like(coef))
        self.flat_grad.mul_(coef)

    @torch.no_grad()
    def step(self, closure: Any = None, *, apply: torch.Tensor | None = None) -> Any:
        """One RAdam update of every parameter. apply: a boolean device scalar; when false the
        update is skipped on the device (nothing changes). None applies it unconditionally."""
        loss = closure() if closure is not None else None
        self._check_gradients()
        self._steps_called += 1
        if self.host_control:
            self._step_on_host(apply)
            return loss
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        device = self.flat_grad.device
        keep = torch.ones((), device=device) if apply is None else apply.to(dtype=torch.float32)
        self.step_count.add_(keep.to(torch.float64))
        # Coqui's step size from the step count, in float64 (it uses Python floats).
        # (Python floats as the bases: a tensor made from a number would be a host-to-device copy.)
        t = torch.clamp(self.step_count, min=1.0)
        beta2_t = torch.pow(float(beta2), t)
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * t * beta2_t / (1 - beta2_t)
        bias1 = 1 - torch.pow(float(beta1), t)
        rectified = n_sma >= 5
        rect_term = torch.clamp(
            (1 - beta2_t)
            * (n_sma - 4)
            / (n_sma_max - 4)
            * (n_sma - 2)
            / torch.clamp(n_sma, min=1e-12)
            * n_sma_max
            / (n_sma_max - 2),
            min=0.0,
        )
        step_size = torch.where(rectified, torch.sqrt(rect_term), torch.ones_like(t)) / bias1
        scale = (-step_size * lr).to(torch.float32) * keep
        weights = (keep * (1 - beta1), keep * (1 - beta2), 1 - wd * lr * keep if wd != 0 else None)
        for a, b in self._chunks:
            self._update(
                self.flat_param[a:b],
                self.flat_grad[a:b],
                self.exp_avg[a:b],
                self.exp_avg_sq[a:b],
                apply,
                weights,
                rectified,
                scale,
                eps,
            )
        return loss

    @torch.no_grad()
    def _step_on_host(self, apply: torch.Tensor | None) -> None:
        """Coqui's RAdam step, op for op, on cache-sized slices of the flat buffers; the skip read on
        the host (a CPU tensor: no sync to avoid)."""
        if apply is not None and not bool(apply):
            return
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        self.step_count.add_(1.0)
        step = float(self.step_count)
        beta2_t = beta2**step
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
        if n_sma >= 5:
            rect = (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
            step_size = math.sqrt(rect) / (1 - beta1**step)
        else:
            step_size = 1.0 / (1 - beta1**step)
        for a, b in self._chunks:
            param, grad = self.flat_param[a:b], self.flat_grad[a:b]
            exp_avg, exp_avg_sq = self.exp_avg[a:b], self.exp_avg_sq[a:b]
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            if wd != 0:
                param.add_(param, alpha=-wd * lr)
            if n_sma >= 5:
                param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size * lr)
            else:
                param.add_(exp_avg, alpha=-step_size * lr)

    @staticmethod
    def _update(
        param: torch.Tensor,
        grad: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        apply: torch.Tensor | None,
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        rectified: torch.Tensor,
        scale: torch.Tensor,
        eps: float,
    ) -> None:
        """The update of one slice of the flat buffers (all of them on a GPU)."""
        if apply is not None:
            grad = torch.where(apply, grad, 0.0)  # a skipped update's NaN never reaches the moments
        moment1, moment2, decay = weights
        # m + w * (g - m) with w = keep * (1 - beta): keep = 0 leaves the moments exactly as they were.
        exp_avg.lerp_(grad, moment1)
        exp_avg_sq.lerp_(grad * grad, moment2)
        if decay is not None:
            param.mul_(decay)
        denom = torch.where(rectified, exp_avg_sq.sqrt().add_(eps), 1.0)
        param.add_(exp_avg / denom * scale)

    # -- checkpoints ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this optimizer's own state, or that of Coqui's RAdam or torch's RAdam (the same
        per-parameter step / exp_avg / exp_avg_sq), so a run can switch implementation on resume."""
        super().load_state_dict(state_dict)
        steps = set()
        with torch.no_grad():
            for p, m, v in zip(self._params, self._views(self.exp_avg), self._views(self.exp_avg_sq), strict=True):
                state = self.state.get(p) or {}
                if "exp_avg" in state:
                    m.copy_(state["exp_avg"])
                    v.copy_(state["exp_avg_sq"])
                    step = state.get("step", 0)
                    steps.add(float(step.item() if torch.is_tensor(step) else step))
                else:  # a parameter Coqui's RAdam never stepped
                    m.zero_()
                    v.zero_()
            if len(steps) > 1:
                logger.warning(
                    " ! The restored optimizer state has per-parameter step counts %s; FlatRAdam keeps one "
                    "(the largest)",
                    sorted(steps),
                )
            self.step_count.fill_(max(steps) if steps else 0.0)
        group = self.param_groups[0]
        group.pop("buffer", None)  # Coqui's RAdam caches step sizes in the group; FlatRAdam computes them
        group["betas"] = tuple(group["betas"])
        self._bind_state()
        self.rebind_gradients()


def host_control_default(device: torch.device) -> bool:
    """FlatRAdam decides its skip on the host on a CPU (free there), on the device on a GPU."""
    return device.type != "cuda"


def make_radam(
    params: Iterable[torch.nn.Parameter], *, impl: str, lr: float, optimizer_params: dict[str, Any]
) -> torch.optim.Optimizer:
    """GlowTTS's optimizer: the kit's FlatRAdam ("flat") or Coqui's own RAdam ("coqui")."""
    if impl == "coqui":
        from TTS.utils.radam import RAdam

        return RAdam(params, lr=lr, **optimizer_params)
    if impl != "flat":
        raise ValueError(f"radam_impl {impl!r}: expected one of {IMPLEMENTATIONS}")
    params_ = {k: v for k, v in optimizer_params.items() if k != "degenerated_to_sgd"}
    if not optimizer_params.get("degenerated_to_sgd", True):
        raise ValueError("FlatRAdam implements Coqui's default degenerated_to_sgd=True only; use radam_impl = coqui")
    return FlatRAdam(params, lr=lr, **params_)


def relative_difference(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """The largest per-tensor ||a - b|| / ||b||: how far two parameter sets are apart."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        denom = float(torch.linalg.vector_norm(y.double()))
        diff = float(torch.linalg.vector_norm(x.double() - y.double()))
        worst = max(worst, diff / denom if denom else (0.0 if diff == 0 else math.inf))
    return worst
