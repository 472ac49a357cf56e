"""torch.compile for GlowTTS's decoder: fewer kernel launches per step on a GPU.

On an H100/H200 GlowTTS is launch-bound: thousands of small kernels per forward+backward, each
launched by the host and each costing the GPU a few microseconds whatever its size (docs/GPU.md:
Coqui's step launches ~9,100 kernels at batch 8). The decoder (12 flow blocks of ActNorm,
invertible 1x1 convolution and a WaveNet coupling layer) is most of the model's. Compiling it
fuses its elementwise work into far fewer kernels (Inductor). Replaying them as CUDA graphs
(mode "reduce-overhead", compile_cuda_graphs = true) would also remove their launches, but its
capture failed on the H200 ("operation failed due to a previous error during capture"), and a
failed capture leaves the process's CUDA RNG state unusable, so it is off by default.

- What is compiled: model.decoder in the training forward pass only, with dynamic shapes (one
  compile serves every batch size and length); data-dependent init, evaluation and synthesis run
  it eagerly. The numbers are the decoder's own: tests/test_compilation.py compares compiled and
  eager losses and gradients on the tiny model.
- Shapes: with dynamic shapes one compile serves every length, and a CUDA graph (when on) is
  recorded once per distinct (batch, frames) shape; the loader pads every batch up to a small fixed
  set of lengths (training/batch_sampler.py bucket_length) when compiling, so shapes repeat for
  the graphs and for cudnn's per-shape tuning; padding is masked and changes no loss.
- Coqui's WaveNet slices with a CPU tensor, a graph break per layer: patched in the boundary
  (coqui_compat.patch_wavenet). Each weight-normed layer is a class of its own
  (torch.nn.utils.parametrize), so Dynamo's recompile limit is raised.
- Inductor's channels-last layout choice for convolutions fails on the invertible 1x1
  convolution's 4-D view with a dynamic length (torch 2.11: "cannot determine truth value of
  Relational" while ordering symbolic strides), so it is switched off; that convolution has 4
  channels, where the layout gains nothing.
- Failure: if compiling fails (Dynamo or Inductor raise, in the forward or in the first backward),
  the run says so in one line and continues eagerly; an update whose backward failed is dropped.

config `compile_model`: "auto" (on with CUDA, off on a CPU, where compiling costs more than it
saves), "on", "off"; `compile_cuda_graphs`: false (see above).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

SETTINGS = ("auto", "on", "off")
RECOMPILE_LIMIT = 64


def wanted(setting: str) -> bool:
    """Whether `compile_model` asks for a compiled decoder on this machine."""
    if setting not in SETTINGS:
        raise ValueError(f"compile_model {setting!r}: expected one of {SETTINGS}")
    return setting == "on" or (setting == "auto" and torch.cuda.is_available())


def _compile_errors() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as dynamo_exc

    errors: list[type[BaseException]] = [dynamo_exc.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # older torch
        pass
    return tuple(errors)


class CompiledDecoder:
    """model.decoder compiled (module docstring); calls like the decoder, falls back to it for good
    after the first compile error."""

    def __init__(self, decoder: torch.nn.Module, *, mode: str | None, backend: str = "inductor") -> None:
        import torch._dynamo

        from ruslan_glowtts.training.coqui_compat import patch_wavenet

        patch_wavenet()
        import torch._inductor.config as inductor_config

        for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT))
        inductor_config.layout_optimization = False  # see the module docstring
        # One CUDA graph per (batch, frames) shape is the plan (the length grid bounds them): no warning per 8.
        inductor_config.triton.cudagraph_dynamic_shape_warn_limit = None
        self.eager = decoder
        self.mode = mode
        self.cuda_graphs = mode == "reduce-overhead"
        self.compiled = torch.compile(decoder, mode=mode, dynamic=True, backend=backend)
        self.failed = False
        self.compiles = 0  # calls that compiled a new graph
        self.compile_seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        try:
            result = self.compiled(*args, **kwargs)
        except _compile_errors() as exc:
            self.fail(exc)
            return self.eager(*args, **kwargs)
        if counters["stats"]["unique_graphs"] != before:
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - started
            logger.info(
                " > Compiled GlowTTS's decoder (%d compile%s, %.1f s so far)",
                self.compiles,
                "s" if self.compiles > 1 else "",
                self.compile_seconds,
            )
        return result

    def fail(self, exc: BaseException) -> None:
        self.failed = True
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        logger.warning(
            " ! Compiling the decoder failed (%s: %s): training continues without torch.compile "
            "(--set compile_model=off skips the attempt)",
            type(exc).__name__,
            first,
        )


def attach(model: Any, setting: str, *, cuda_graphs: bool = False, backend: str = "inductor") -> CompiledDecoder | None:
    """Compile model.decoder when `setting` asks for it; the model's forward uses it in training.
    cuda_graphs (CUDA only): mode "reduce-overhead", its kernels replayed as CUDA graphs."""
    if not wanted(setting):
        return None
    mode = "reduce-overhead" if cuda_graphs and torch.cuda.is_available() else None
    compiled = CompiledDecoder(model.decoder, mode=mode, backend=backend)
    model.__dict__["compiled_decoder"] = compiled  # not a submodule: its parameters are the decoder's
    return compiled


def compiled_decoder(model: Any) -> CompiledDecoder | None:
    return model.__dict__.get("compiled_decoder")


def step_begin(model: Any) -> None:
    """Tell CUDA graph trees a new training iteration starts (the previous one's outputs may go)."""
    compiled = compiled_decoder(model)
    if compiled is not None and compiled.cuda_graphs and not compiled.failed:
        torch.compiler.cudagraph_mark_step_begin()


def recover(model: Any, exc: BaseException) -> bool:
    """A backward pass raised: if it was the compiled decoder's compilation, fall back to eager
    and return True (the caller drops the update); anything else is not ours to handle."""
    compiled = compiled_decoder(model)
    if compiled is None or compiled.failed or not isinstance(exc, _compile_errors()):
        return False
    compiled.fail(exc)
    return True
