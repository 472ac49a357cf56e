"""torch.compile of GlowTTS's decoder (training/compilation.py): the same numbers as eager, one graph
for every shape, Coqui's WaveNet gate patched without changing a number, and a failed compile
falling back to eager in one line. The GPU's CUDA graphs are measured by bench/gpu_check.py."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch._dynamo.utils import counters

from ruslan_glowtts.training import compilation
from ruslan_glowtts.training.cli import parse_args, request_from_args
from ruslan_glowtts.training.train import train
from tests.helpers import glowtts_losses, read_scalars, run_dirs, tiny_args, tiny_model


def _batch(batch: int, chars: int, frames: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x_lengths = torch.randint(2, chars + 1, (batch,), generator=generator)
    x_lengths[0] = chars
    y_lengths = torch.randint(chars, frames + 1, (batch,), generator=generator)
    y_lengths[0] = frames
    return (
        torch.randint(1, 30, (batch, chars), generator=generator),
        x_lengths,
        torch.randn(batch, frames, 80, generator=generator),
        y_lengths,
    )


def _loss_and_grads(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[float, list[torch.Tensor]]:
    x, x_lengths, y, y_lengths = batch
    model.zero_grad()
    torch.manual_seed(7)  # the same dropout masks for every model
    losses = glowtts_losses(model, x, x_lengths, y, y_lengths)
    losses["loss"].backward()
    return float(losses["loss"]), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_the_compiled_decoder_gives_eagers_losses_and_gradients_in_one_graph():
    # aot_eager: Dynamo's capture and AOTAutograd's forward/backward split, run with eager kernels,
    # so the numbers must be identical; Inductor's own kernels are checked below and on the GPU.
    torch.manual_seed(0)
    eager = tiny_model()
    compiled = copy.deepcopy(eager)
    assert compilation.attach(compiled, "on", backend="aot_eager") is not None
    for seed, shape in enumerate([(3, 12, 48), (3, 16, 64), (2, 10, 40), (4, 20, 96)]):
        batch = _batch(*shape, seed=seed)
        loss, grads = _loss_and_grads(compiled, batch)
        reference, reference_grads = _loss_and_grads(eager, batch)
        assert loss == reference
        assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))
    assert counters["stats"]["unique_graphs"] == 1  # dynamic shapes: one compile for every shape
    assert not counters["graph_break"], dict(counters["graph_break"])  # WaveNet's IntTensor slice is gone
    assert compilation.compiled_decoder(compiled).compiles == 1


def test_eval_and_data_dependent_init_run_the_decoder_eagerly():
    torch.manual_seed(0)
    model = tiny_model()
    compilation.attach(model, "on", backend="aot_eager")
    x, x_lengths, y, y_lengths = _batch(2, 8, 32, seed=0)
    model.run_data_dep_init = True
    with torch.no_grad():
        model(x, x_lengths, y, y_lengths)
    model.eval()
    with torch.no_grad():
        model(x, x_lengths, y, y_lengths)
    assert counters["stats"]["unique_graphs"] == 0


def test_wavenet_gate_patch_is_coquis_maths():
    from TTS.tts.layers.generic import wavenet

    from ruslan_glowtts.training import coqui_compat

    coqui_compat.patch_wavenet()
    assert wavenet.fused_add_tanh_sigmoid_multiply is coqui_compat.fused_add_tanh_sigmoid_multiply
    a, b = torch.randn(2, 64, 17), torch.randn(2, 64, 17)
    original = coqui_compat._original_gate(a, b, torch.IntTensor([32]))
    assert torch.equal(coqui_compat.fused_add_tanh_sigmoid_multiply(a, b, torch.IntTensor([32])), original)


def test_a_failed_compile_warns_once_and_runs_eagerly(caplog):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch.manual_seed(0)
    model = tiny_model()
    eager = copy.deepcopy(model)
    compilation.attach(model, "on", backend=failing_backend)
    batch = _batch(2, 8, 32, seed=0)
    with caplog.at_level(logging.WARNING, logger="ruslan_glowtts"):
        loss, _ = _loss_and_grads(model, batch)
        again, _ = _loss_and_grads(model, batch)
    assert loss == again == _loss_and_grads(eager, batch)[0]
    warnings = [r.getMessage() for r in caplog.records if "Compiling the decoder failed" in r.getMessage()]
    assert len(warnings) == 1 and "compile_model=off" in warnings[0] and "\n" not in warnings[0]


def test_compile_setting():
    assert not compilation.wanted("off") and compilation.wanted("on")
    assert compilation.wanted("auto") == torch.cuda.is_available()
    with pytest.raises(ValueError):
        compilation.wanted("yes")


@pytest.mark.slow
def test_inductor_compiles_a_small_decoder_once_for_every_length():
    # Inductor's own (C++) kernels on the CPU: one compile for batches of 2-4 and any length, the
    # numbers eager's to float tolerance. (Found here: its channels-last layout choice failed on
    # the invertible 1x1 convolution's view with a dynamic length.)
    torch.manual_seed(0)
    small = ["num_flow_blocks_dec=1", "num_block_layers=1", "dropout_p_dec=0.0"]
    eager = tiny_model(*small)
    compiled = copy.deepcopy(eager)
    compilation.attach(compiled, "on")
    for seed, shape in enumerate([(3, 12, 48), (2, 10, 40), (4, 20, 96)]):
        batch = _batch(*shape, seed=seed)
        loss, grads = _loss_and_grads(compiled, batch)
        reference, reference_grads = _loss_and_grads(eager, batch)
        assert loss == pytest.approx(reference, rel=1e-5)
        for a, b in zip(grads, reference_grads, strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert not compilation.compiled_decoder(compiled).failed
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_a_compiled_training_run_logs_the_eager_runs_losses(sample_22k, tmp_path, monkeypatch):
    # The whole kit step (guarded update, deferred logging, padded batches) with the decoder
    # compiled (aot_eager) and without: the same loss at every step.
    attach = compilation.attach
    monkeypatch.setattr(
        compilation, "attach", lambda model, setting, **kwargs: attach(model, setting, backend="aot_eager")
    )
    curves = {}
    for setting in ("off", "on"):
        output = tmp_path / setting
        outcome = train(
            request_from_args(
                parse_args(
                    [
                        "--dataset-path",
                        str(sample_22k),
                        "--output-path",
                        str(output),
                        "--max-steps",
                        "7",
                        *tiny_args("--set", f"compile_model={setting}", "--set", "pad_lengths=on"),
                    ]
                )
            )
        )
        assert outcome.status == "max_steps", outcome.message
        (run,) = run_dirs(output)
        curves[setting] = read_scalars(run, "TrainIterStats/loss")
    assert len(curves["on"]) == 5  # 7 steps, 2 of data-dependent init
    assert curves["on"] == curves["off"]


@pytest.mark.slow
def test_a_backward_that_fails_to_compile_drops_that_update_and_training_goes_on_eagerly(
    sample_22k, tmp_path, monkeypatch, caplog
):
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.exc import InductorError

    def no_backward(graph, example_inputs):
        raise InductorError(RuntimeError("no backward compiler here"), None)

    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: graph, bw_compiler=no_backward)
    attach = compilation.attach
    monkeypatch.setattr(compilation, "attach", lambda model, setting, **kwargs: attach(model, setting, backend=backend))
    output = tmp_path / "runs"
    request = request_from_args(
        parse_args(
            [
                "--dataset-path",
                str(sample_22k),
                "--output-path",
                str(output),
                "--max-steps",
                "7",
                *tiny_args("--set", "compile_model=on"),
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="ruslan_glowtts"):
        outcome = train(request)
    assert outcome.status == "max_steps", outcome.message
    warnings = [r.getMessage() for r in caplog.records if "Compiling the decoder failed" in r.getMessage()]
    assert len(warnings) == 1 and "no backward compiler here" in warnings[0]
    (run,) = run_dirs(output)
    # step 2 (the first after data-dependent init) compiled its forward, failed its backward: skipped
    assert read_scalars(run, "Health/skipped_steps") == {2: 1.0}
    assert sorted(read_scalars(run, "TrainIterStats/grad_norm")) == [3, 4, 5, 6]
