"""FlatRAdam (training/optimizer.py): Coqui's RAdam maths on flat buffers, and the device-side skip."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from TTS.utils.radam import RAdam as CoquiRAdam

from ruslan_glowtts.training.optimizer import FlatRAdam, make_radam, relative_difference
from tests.helpers import glowtts_losses, tiny_model

KWARGS = {"lr": 2e-4, "betas": (0.9, 0.998), "eps": 1e-8, "weight_decay": 1e-6}  # GlowTTS's own (stable lr)


def _random_batch(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    x_lengths, y_lengths = torch.tensor([12, 7]), torch.tensor([32, 20])
    x = torch.randint(1, 30, (2, 12), generator=generator)
    y = torch.randn(2, 32, 80, generator=generator)
    return x, x_lengths, y, y_lengths


def _loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return glowtts_losses(model, *batch)["loss"]


@pytest.mark.parametrize("host_control", [True, False], ids=["cpu-path", "gpu-path"])
def test_flat_radam_follows_coquis_radam_over_100_steps_of_the_tiny_model(host_control):
    # The reference model trains with Coqui's RAdam; FlatRAdam gets the very same gradients each
    # step (copied), so any difference is the optimizer's own arithmetic.
    torch.manual_seed(0)
    reference = tiny_model()
    flat_model = copy.deepcopy(reference)
    coqui = CoquiRAdam(reference.parameters(), **KWARGS)
    flat = FlatRAdam(flat_model.parameters(), **KWARGS, host_control=host_control)
    generator = torch.Generator().manual_seed(1)
    moved = 0.0
    start = [p.detach().clone() for p in reference.parameters()]
    for _ in range(100):
        coqui.zero_grad()
        _loss(reference, _random_batch(generator)).backward()
        for p, q in zip(reference.parameters(), flat_model.parameters(), strict=True):
            q.grad.copy_(p.grad)
        coqui.step()
        flat.step()
    moved = relative_difference(list(reference.parameters()), start)
    differ = relative_difference(list(flat_model.parameters()), list(reference.parameters()))
    assert moved > 1e-3  # the parameters really moved (both switch to the rectified update at step 6)
    assert differ < 1e-6, f"FlatRAdam differs from Coqui's RAdam by {differ:.2e} (relative) after 100 steps"
    # and the moments agree too
    for p, q in zip(reference.parameters(), flat_model.parameters(), strict=True):
        a, b = coqui.state[p], flat.state[q]
        assert float(b["step"]) == a["step"] == 100
        assert relative_difference([b["exp_avg_sq"]], [a["exp_avg_sq"]]) < 1e-5


@pytest.mark.parametrize("host_control", [True, False], ids=["cpu-path", "gpu-path"])
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_a_skipped_update_changes_nothing_bit_for_bit(poison, host_control):
    torch.manual_seed(0)
    model = tiny_model()
    flat = FlatRAdam(model.parameters(), **KWARGS, host_control=host_control)
    generator = torch.Generator().manual_seed(1)
    for _ in range(7):  # past the switch to the rectified update
        flat.zero_grad()
        _loss(model, _random_batch(generator)).backward()
        flat.step(apply=torch.tensor(True))
    before = [t.clone() for t in (flat.flat_param, flat.exp_avg, flat.exp_avg_sq, flat.step_count)]
    flat.zero_grad()
    _loss(model, _random_batch(generator)).backward()
    next(model.parameters()).grad.view(-1)[0] = poison
    flat.step(apply=torch.isfinite(flat.grad_norm()))
    after = (flat.flat_param, flat.exp_avg, flat.exp_avg_sq, flat.step_count)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # the next healthy update applies as usual
    flat.zero_grad()
    _loss(model, _random_batch(generator)).backward()
    flat.step(apply=torch.isfinite(flat.grad_norm()))
    assert not torch.equal(before[0], flat.flat_param) and float(flat.step_count) == 8


def test_parameters_and_gradients_are_views_of_the_flat_buffers():
    torch.manual_seed(0)
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flat = FlatRAdam(model.parameters(), **KWARGS)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # values kept
    _loss(model, _random_batch(torch.Generator().manual_seed(0))).backward()
    norm = flat.grad_norm()
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert torch.allclose(norm, expected, rtol=1e-5)
    flat.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    # someone replaces a gradient: the optimizer copies it back into its buffer
    p = next(model.parameters())
    p.grad = torch.ones_like(p)
    assert flat.rebind_gradients() == 1 and float(flat.flat_grad.sum()) == p.numel()


def test_clipping_matches_torch():
    torch.manual_seed(0)
    model = tiny_model()
    reference = copy.deepcopy(model)
    flat = FlatRAdam(model.parameters(), **KWARGS)
    batch = _random_batch(torch.Generator().manual_seed(0))
    for m in (model, reference):  # the same dropout masks for both
        torch.manual_seed(3)
        _loss(m, batch).backward()
    before = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5)
    norm = flat.grad_norm()
    flat.clip_(norm, 0.5)
    assert torch.allclose(norm, before, rtol=1e-5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-9)


def test_state_dict_round_trip_and_coquis_state_loads():
    torch.manual_seed(0)
    model = tiny_model()
    coqui_model = copy.deepcopy(model)
    coqui = CoquiRAdam(coqui_model.parameters(), **KWARGS)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        coqui.zero_grad()
        _loss(coqui_model, _random_batch(generator)).backward()
        coqui.step()
    # a run trained with Coqui's RAdam resumes with FlatRAdam: same moments, same step count
    model.load_state_dict(coqui_model.state_dict())
    flat = FlatRAdam(model.parameters(), **KWARGS)
    flat.load_state_dict(copy.deepcopy(coqui.state_dict()))
    assert float(flat.step_count) == 4
    for p, q in zip(coqui_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(coqui.state[p]["exp_avg"], flat.state[q]["exp_avg"])
    # its own state_dict goes through torch.save and back into a fresh FlatRAdam
    saved = copy.deepcopy(flat.state_dict())
    other = FlatRAdam(copy.deepcopy(model).parameters(), **KWARGS)
    other.load_state_dict(saved)
    assert torch.equal(other.exp_avg, flat.exp_avg) and float(other.step_count) == 4
    assert all(
        p.grad.data_ptr() == v.data_ptr() for p, v in zip(other._params, other._views(other.flat_grad), strict=True)
    )


def test_make_radam_picks_the_implementation():
    model = tiny_model()
    assert isinstance(make_radam(model.parameters(), impl="coqui", lr=1e-3, optimizer_params={}), CoquiRAdam)
    assert isinstance(
        make_radam(model.parameters(), impl="flat", lr=1e-3, optimizer_params={"betas": [0.9, 0.998]}), FlatRAdam
    )
    with pytest.raises(ValueError, match="radam_impl"):
        make_radam(model.parameters(), impl="fast", lr=1e-3, optimizer_params={})
