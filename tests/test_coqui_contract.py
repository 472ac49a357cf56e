"""What the kit relies on in Coqui, pinned (ruslan_glowtts/training/coqui_compat.py), and that the
reliance stays in that one module: a Coqui upgrade fails here, not hours into a run."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.training import coqui_compat as cc
from tests.helpers import REPO, read_scalars, run_dirs, tiny_args

SCANNED = ("ruslan_glowtts", "bench", "scripts")  # the kit's code that runs Coqui (tests poke it on purpose)
ATTRIBUTE = re.compile(r"(\w+(?:\(\))?)\.(_[a-z]\w*)\b")  # obj._name / super()._name
COQUI_TEXTS = ("save_fsspec", '"NaN loss', "NaN loss with (")  # the atomic-save patch, GlowTTS's error text
AMP_SCALER_KEY = re.compile(r"[\"']amp_scaler[\"']")  # the loss-dict key itself, not a name containing it
COQUI_OBJECTS = ("trainer", "model", "super()")  # their private attributes are Coqui's, whatever the name


def _private_use(line: str, private: set[str]) -> bool:
    return any(m.group(2) in private or m.group(1) in COQUI_OBJECTS for m in ATTRIBUTE.finditer(line))


def test_diagnose_starts_without_torch_or_coqui():
    code = (
        "import ruslan_glowtts.monitor.diagnose, sys; "
        "assert not {'torch', 'trainer', 'TTS'} & set(sys.modules), sorted({'torch', 'trainer', 'TTS'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_installed_coqui_is_supported_and_its_contract_holds():
    assert cc.version_problems() == []
    assert cc.contract_problems() == []


def test_contract_check_reports_a_changed_nan_message_a_changed_method_and_a_missing_attribute(monkeypatch):
    from trainer import Trainer
    from TTS.tts.layers.losses import GlowTTSLoss

    def forward(self, *args):
        raise RuntimeError(" [!] Non-finite loss in loss.")

    def optimize(self, batch, optimizer, scaler, criterion, scheduler, *, optimizer_idx=None):
        return None

    monkeypatch.setattr(GlowTTSLoss, "forward", forward)
    monkeypatch.setattr(Trainer, "optimize", optimize)
    monkeypatch.setattr(cc, "TRAINER_ATTRIBUTES", (*cc.TRAINER_ATTRIBUTES, "steps_done"))
    problems = cc.contract_problems()
    assert any("GlowTTSLoss's NaN error reads ' [!] Non-finite loss in loss.'" in p for p in problems), problems
    assert any(p.startswith("Trainer.optimize signature changed") for p in problems), problems
    assert any(p.startswith("Trainer.optimize source changed") for p in problems), problems
    assert any(p.startswith("Trainer no longer has steps_done") for p in problems), problems


class OldTrainer:
    """A Trainer whose code no longer sets epochs_done and has no master_params."""

    def __init__(self, args):
        self.args = args
        self.total_steps_done: int = 0

    def fit(self):
        return self.total_steps_done == 0


def test_each_pinned_trainer_attribute_is_checked():
    missing = [p.split()[4] for p in cc.trainer_attribute_problems(OldTrainer)]
    assert "epochs_done" in missing and "master_params" in missing
    assert "args" not in missing and "total_steps_done" not in missing  # set on self (annotated or not)
    assert cc.trainer_attribute_problems(OldTrainer, ("args", "fit", "total_steps_done")) == []
    assert cc.trainer_attribute_problems() == []  # the installed Trainer has them all


def _kit_texts() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for root in SCANNED for p in sorted((REPO / root).rglob("*.py"))}


def test_every_public_trainer_attribute_the_kit_uses_is_pinned():
    from trainer import Trainer

    coqui = cc.trainer_attributes(Trainer)
    pinned = (*cc.PINNED_SIGNATURES, *cc.PINNED_SOURCES)
    methods = {name.split(".")[1] for name in pinned if name.startswith("Trainer.")}  # pinned with their code
    texts = _kit_texts()
    # KitTrainerBase (coqui_compat.py) counts here: its self.x are Trainer attributes too
    subclass_lines = _coqui_subclass_lines(
        {path: ast.parse(text) for path, text in texts.items()}, COQUI_BASES - {"KitTrainerBase"}
    )
    used: dict[str, str] = {}
    for path, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            owners = r"trainer|self" if number in subclass_lines[path] else r"trainer"
            for name in re.findall(rf"\b(?:{owners})\.([a-z]\w*)", line):
                used.setdefault(name, f"{path.relative_to(REPO)}:{number}")
    unpinned = {
        name: where
        for name, where in used.items()
        if name in coqui and name not in methods and name not in cc.TRAINER_ATTRIBUTES
    }
    assert unpinned == {}, f"add these to coqui_compat.TRAINER_ATTRIBUTES: {unpinned}"
    assert set(cc.TRAINER_ATTRIBUTES) <= set(used), "pinned but no longer used: drop them from TRAINER_ATTRIBUTES"


def test_version_outside_the_range_is_one_line_with_what_to_do(monkeypatch, caplog):
    installed = {"coqui-tts": "0.29.1", "coqui-tts-trainer": "0.4.0"}
    assert cc.version_problems(installed) == [
        "coqui-tts 0.29.1 is installed; this kit was written for coqui-tts 0.28.x"
    ]
    assert cc.version_problems({"coqui-tts": "0.28.3", "coqui-tts-trainer": "0.4.2"}) == []
    assert "not installed" in cc.version_problems({"coqui-tts": "0.28.0"})[0]

    monkeypatch.setattr(cc.metadata, "version", lambda package: installed[package])
    monkeypatch.setattr(cc, "_checked", False)
    monkeypatch.delenv(cc.ALLOW_ENV, raising=False)
    with pytest.raises(UserError) as error:
        cc.require_supported_coqui()
    assert str(error.value) == (
        "coqui-tts 0.29.1 is installed; this kit was written for coqui-tts 0.28.x: "
        "pip install -r requirements.txt, or set RUSLAN_KIT_ALLOW_COQUI=1 to try anyway"
    )

    monkeypatch.setenv(cc.ALLOW_ENV, "1")
    monkeypatch.setattr(cc, "contract_problems", lambda: ["Trainer.optimize source changed"])
    with caplog.at_level(logging.WARNING, logger=cc.__name__):
        cc.require_supported_coqui()  # allowed: warnings, no error
    assert "trying anyway" in caplog.text and "Coqui contract: Trainer.optimize source changed" in caplog.text


def test_the_nan_loss_text_the_kit_matches(tmp_path):
    from ruslan_glowtts.common.run_record import RunRecord
    from ruslan_glowtts.monitor.diagnose import run_ending

    assert cc.is_nan_loss_error(RuntimeError(" [!] NaN loss with loss_dur."))
    assert not cc.is_nan_loss_error(RuntimeError("CUDA out of memory"))
    assert not cc.is_nan_loss_error(ValueError(" [!] NaN loss with loss."))
    log_line = "RuntimeError:  [!] NaN loss with log_mle."
    assert cc.NAN_LOSS_LOG_PATTERN.search(log_line).group(1) == "log_mle"
    (tmp_path / "trainer_0_log.txt").write_text(f"GLOBAL_STEP: 12\n{log_line}\n", encoding="utf-8")
    assert run_ending(tmp_path, RunRecord())["kind"] == "nan_loss"  # diagnose reads the log with the same pattern


class FakeScaler:
    def get_scale(self) -> float:
        return 32768.0


def test_amp_scaler_is_added_to_the_logged_losses_under_a_grad_scaler():
    assert cc.record_amp_scale({"loss": 1.0}, FakeScaler()) == {"loss": 1.0, "amp_scaler": 32768.0}
    assert cc.record_amp_scale({"loss": 1.0}, None) == {"loss": 1.0}
    base = cc.KitTrainerBase.__new__(cc.KitTrainerBase)  # detach_loss_dict needs no Trainer state
    logged = base.losses_to_log({"loss": torch.tensor(2.0)}, grad_norm=3.0, scaler=FakeScaler())
    assert logged == {"loss": 2.0, "amp_scaler": 32768.0, "grad_norm": 3.0}


@pytest.mark.slow
def test_a_run_with_a_grad_scaler_logs_amp_scaler_as_coqui_does(prepared_sample, tmp_path):
    # fp16 GradScaler needs CUDA; on the CPU Coqui's use_grad_scaler gives the kit's step a
    # (disabled, scale 1.0) GradScaler, which exercises the same path. bench/gpu_check.py checks fp16.
    import train_ruslan_glowtts

    output = tmp_path / "runs"
    code = train_ruslan_glowtts.main(
        [
            "--dataset-path",
            str(prepared_sample),
            "--output-path",
            str(output),
            "--max-steps",
            "3",
            *tiny_args("--set", "use_grad_scaler=true"),
        ]
    )
    assert code == 0
    (run,) = run_dirs(output)
    scale = read_scalars(run, cc.AMP_SCALER_TAG)
    assert scale and set(scale.values()) == {1.0}, scale


@pytest.mark.slow
def test_coqui_writes_the_tags_and_checkpoint_layout_the_kit_reads(tiny_glowtts_run):
    from ruslan_glowtts.common.run_layout import TRAIN_TAGS
    from ruslan_glowtts.monitor.events import read_run
    from ruslan_glowtts.training.trainer import SAMPLER_STATE

    tags = set(read_run(tiny_glowtts_run).scalars)
    assert set(TRAIN_TAGS) <= tags, sorted(tags)
    checkpoint = max(tiny_glowtts_run.glob("checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert cc.CHECKPOINT_KEYS <= set(state) and SAMPLER_STATE in state
    assert state["step"] == int(checkpoint.stem.split("_")[1])


def _coqui_private_names() -> set[str]:
    import inspect

    import trainer.trainer
    from trainer import Trainer
    from TTS.tts.datasets.dataset import TTSDataset
    from TTS.tts.models.glow_tts import GlowTTS
    from TTS.vocoder.models.gan import GAN

    names = {
        n
        for cls in (Trainer, TTSDataset, GlowTTS, GAN)
        for n in dir(cls)
        if n.startswith("_") and not n.startswith("__")
    }
    return names | set(re.findall(r"self\.(_[a-z]\w*)", inspect.getsource(trainer.trainer)))


COQUI_BASES = {"Trainer", "KitTrainerBase", "GlowTTS", "BaseTTS", "TTSDataset", "GAN"}


def _coqui_subclass_lines(trees: dict[Path, ast.AST], bases: set[str] = COQUI_BASES) -> dict[Path, set[int]]:
    """Per file, the lines inside the package's classes derived from a Coqui class (`bases`),
    directly or through another class of the package (there self._x is Coqui's)."""
    classes = {path: [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] for path, tree in trees.items()}
    derived = set(bases)
    for _ in range(4):  # KitTrainer(KitTrainerBase), HifiganTrainer(KitTrainer), ...
        derived |= {
            c.name
            for cs in classes.values()
            for c in cs
            if any(ast.unparse(b).split(".")[-1] in derived for b in c.bases)
        }
    return {
        path: {
            line for c in cs if c.name in derived and c.name not in bases for line in range(c.lineno, c.end_lineno + 1)
        }
        for path, cs in classes.items()
    }


def _package_findings(private: set[str]) -> list[str]:
    found = []
    texts = {p: text for p, text in _kit_texts().items() if p.name != "coqui_compat.py"}
    subclass_lines = _coqui_subclass_lines({path: ast.parse(text) for path, text in texts.items()})
    for path, text in texts.items():
        in_subclass = subclass_lines[path]
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            names = private if number in in_subclass else set()
            if _private_use(line, names):
                found.append(where)
            elif (m := re.search(r"\bdef (_[a-z]\w*)\(", line)) and m.group(1) in names:
                found.append(where)  # overriding a Coqui private method
            elif any(text in line for text in COQUI_TEXTS) or AMP_SCALER_KEY.search(line):
                found.append(where)
    return found


def test_coqui_private_names_and_message_texts_appear_only_in_coqui_compat():
    found = _package_findings(_coqui_private_names())
    assert found == [], "Coqui internals outside ruslan_glowtts/training/coqui_compat.py:\n" + "\n".join(found)
    assert {p.parts[len(REPO.parts)] for p in _kit_texts()} == set(SCANNED)  # bench/ and scripts/ are read too


def test_the_grep_above_catches_the_forms_the_kit_used_to_have(tmp_path, monkeypatch):
    package = tmp_path / "ruslan_glowtts"
    package.mkdir()
    (package / "base.py").write_text("class KitTrainer(KitTrainerBase):\n    pass\n", encoding="utf-8")
    (package / "uses.py").write_text(
        "class Guard:\n"
        "    def _log(self):\n"  # a private name Coqui also has, on a class of the kit's own: allowed
        "        self._log()\n"
        "        save(trainer._get_model())\n"
        "class Hifigan(KitTrainer):\n"
        "    def _pick_target_avg_loss(self, keep):\n"
        "        self._stepped_optimizers.add(None)\n"
        "        self._epoch_batches = 0\n"  # the kit's own attribute: allowed
        "        return super()._pick_target_avg_loss(keep)\n"
        "trainer.io.save_fsspec = save\n"
        "kind = 'nan_loss' if \"NaN loss\" in message else 'crashed'\n",
        encoding="utf-8",
    )
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "timing.py").write_text("trainer.optimize(batch)\ntrainer._close()\n", encoding="utf-8")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "check.py").write_text(
        "result = {'fp16_amp_scaler': ok}\n"  # a name that contains the key: allowed
        "scale = loss_dict['amp_scaler']\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = [f.split(": ", 1)[0] for f in _package_findings(_coqui_private_names())]
    assert found == [
        *(f"ruslan_glowtts/uses.py:{n}" for n in (4, 6, 7, 9, 10, 11)),
        "bench/timing.py:2",
        "scripts/check.py:2",
    ], found
