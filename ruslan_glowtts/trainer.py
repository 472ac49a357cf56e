"""KitTrainer: Coqui's Trainer with the failure handling a long run needs.

Coqui's `Trainer.fit()` deletes the run folder, TensorBoard logs included, when any exception
leaves it before the first checkpoint, and calls sys.exit itself. KitTrainer.fit() keeps the
folder whatever happens, saves a checkpoint on Ctrl-C and on a crash (when the weights are still
finite, so --continue-path works after either), stops cleanly at --max-steps, and returns an
Outcome instead of exiting.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from trainer import Trainer

from ruslan_glowtts.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OK

logger = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised at the end of a step to leave Coqui's training loop cleanly."""


@dataclass
class Outcome:
    status: str  # finished | max_steps | interrupted | crashed
    exit_code: int
    step: int
    message: str = ""


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class KitTrainer(Trainer):
    def __init__(self, *args: Any, max_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_steps = max_steps
        self.callbacks.callbacks_on_train_step_end.append(self._stop_at_max_steps)
        # The kit's own log lines go into the run's log file next to Coqui's.
        self._kit_log_handler = logging.FileHandler(self.output_path / f"trainer_{self.args.rank}_log.txt")
        self._kit_log_handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("ruslan_glowtts").addHandler(self._kit_log_handler)

    def _stop_at_max_steps(self, trainer: Trainer) -> None:
        if self.max_steps and self.total_steps_done >= self.max_steps:
            raise StopTraining

    def _save_if_finite(self, why: str) -> bool:
        if self.args.rank != 0:
            return False
        if not weights_finite(self.model):
            logger.error(" ! Not saving a checkpoint (%s): the weights are not finite.", why)
            return False
        self.save_checkpoint()
        return True

    def fit(self) -> Outcome:  # type: ignore[override]
        try:
            self._fit()
            outcome = Outcome("finished", EXIT_OK, self.total_steps_done, "all epochs done")
        except StopTraining:
            self._save_if_finite("--max-steps reached")
            outcome = Outcome("max_steps", EXIT_OK, self.total_steps_done, f"stopped at step {self.total_steps_done}")
        except KeyboardInterrupt:
            saved = self.config.save_on_interrupt and self._save_if_finite("Ctrl-C")
            self.callbacks.on_keyboard_interrupt(self)
            outcome = Outcome("interrupted", EXIT_INTERRUPTED, self.total_steps_done,
                              "interrupted by Ctrl-C" + ("; checkpoint saved" if saved else ""))
        except Exception as exc:  # noqa: BLE001 - any crash: keep the folder, save what can be saved
            logger.error("%s", traceback.format_exc())
            saved = self._save_if_finite("crash")
            outcome = Outcome("crashed", EXIT_CRASH, self.total_steps_done,
                              f"{type(exc).__name__}: {exc}" + ("; checkpoint saved" if saved else ""))
        finally:
            self._close()
        return outcome

    def _close(self) -> None:
        if self.args.rank == 0:
            self.dashboard_logger.finish()
        if self.num_gpus > 1 and dist.is_initialized():
            dist.destroy_process_group()
        # Coqui adds a file handler per Trainer and never removes it; in one process (tests,
        # escalation chains) later runs would log into earlier runs' files.
        run_dir = str(Path(self.output_path).resolve())
        for name in ("trainer", "ruslan_glowtts"):
            log = logging.getLogger(name)
            for handler in list(log.handlers):
                if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(run_dir):
                    log.removeHandler(handler)
                    handler.close()
