"""A training step's logged values, read back by the host without stalling the GPU.

Coqui's Trainer reads every loss of every step with .item() as soon as the step is queued, and the
kit's guard read the gradient norm before deciding on the update: each read is a host-device
sync, so the host waits for the GPU to finish the step before it may queue the next one, and the
GPU then waits for the host to launch it. On a launch-bound model (GlowTTS at batch 8-32 on an
H100/H200) that idle time is most of the step.

StepValueQueue keeps the values on the device: put() stacks a step's scalars into one small
tensor and starts a non-blocking copy into pinned host memory behind a CUDA event; ready() hands
back the steps whose copy has finished, and waits only for a step that is more than `lag` steps
old (by then the GPU is already working on newer steps, so waiting costs it nothing). Logging,
averaging, printing and the guard's rules then see each step's values one or two steps late; the
skip itself was decided on the device at the update (training/guarded_step.py). On a CPU the
values are host memory already and every step is ready at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_LAG = 2  # steps a value may stay unread before the host waits for it


@dataclass
class ReadValues:
    """One step's values, on the host: the step, its named scalars, and what put() was given with them."""

    step: int
    values: dict[str, float]
    context: Any = None


@dataclass
class _Pending:
    step: int
    names: tuple[str, ...]
    host: torch.Tensor | None
    event: Any
    floats: dict[str, float]
    context: Any


@dataclass
class StepValueQueue:
    """Per-step device scalars, read back in order without blocking (see the module docstring)."""

    lag: int = DEFAULT_LAG
    _pending: deque[_Pending] = field(default_factory=deque)
    _pinned: dict[int, deque[torch.Tensor]] = field(default_factory=dict)  # reusable pinned buffers by length
    waits: int = 0  # reads that had to wait for the GPU (it was more than `lag` steps behind)

    def put(self, step: int, values: dict[str, Any], context: Any = None) -> None:
        """Queue a step's values: 0-d tensors (read back later) and plain numbers (kept as they are)."""
        tensors = {k: v for k, v in values.items() if torch.is_tensor(v)}
        floats = {k: float(v) for k, v in values.items() if not torch.is_tensor(v)}
        host, event = None, None
        if tensors:
            stacked = torch.stack([t.detach().reshape(()).to(torch.float32) for t in tensors.values()])
            if stacked.is_cuda:
                host = self._buffer(len(tensors))
                host.copy_(stacked, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host = stacked
        self._pending.append(_Pending(step, tuple(tensors), host, event, floats, context))

    def ready(self, *, wait: bool = False) -> list[ReadValues]:
        """The queued steps whose values have arrived, oldest first; with wait=True all of them.
        Steps older than `lag` are waited for, so the host never runs more than lag steps ahead."""
        out = []
        while self._pending:
            pending = self._pending[0]
            if pending.event is not None and not wait and len(self._pending) <= self.lag and not pending.event.query():
                break
            if pending.event is not None and not pending.event.query():
                self.waits += 1
                pending.event.synchronize()
            self._pending.popleft()
            values = dict(pending.floats)
            if pending.host is not None:
                values.update(zip(pending.names, pending.host.tolist(), strict=True))
                if pending.event is not None:
                    self._pinned.setdefault(len(pending.names), deque()).append(pending.host)
            out.append(ReadValues(pending.step, values, pending.context))
        return out

    def __len__(self) -> int:
        return len(self._pending)

    def _buffer(self, length: int) -> torch.Tensor:
        free = self._pinned.get(length)
        if free:
            return free.popleft()
        return torch.empty(length, dtype=torch.float32, pin_memory=True)
