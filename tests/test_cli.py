"""Bad input gets one line and exit code 2 with nothing written; trainer.distribute's arguments work."""

from __future__ import annotations

import json

import pytest

from ruslan_glowtts.training.cli import parse_args
from tests.helpers import SAMPLE


def _assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], "unknown preset 'nope'. Available: default, safer, safest, stable"),
        (["--set", "lrr=1"], "unknown config key 'lrr'. Did you mean: lr?"),
        (["--set", "lr=fast"], "wrong type for 'lr'"),
        (["--max-steps", "-3"], "expected a positive integer"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        ([], "--dataset-path DIR is required"),
    ],
)
def test_bad_arguments(run_main, tmp_path, argv, message):
    code, out, err = run_main(*argv, "--output-path", str(tmp_path / "runs"))
    _assert_one_line_error(code, out, err, message)
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_dir(run_main, tmp_path):
    code, out, err = run_main("--dataset-path", str(tmp_path / "nowhere"), "--output-path", str(tmp_path / "runs"))
    _assert_one_line_error(code, out, err, f"--dataset-path {tmp_path / 'nowhere'}: no such folder")
    assert not (tmp_path / "runs").exists()  # not even an empty --output-path


def test_missing_metadata(run_main, tmp_path):
    (tmp_path / "corpus" / "RUSLAN").mkdir(parents=True)
    code, out, err = run_main("--dataset-path", str(tmp_path / "corpus"), "--output-path", str(tmp_path / "runs"))
    _assert_one_line_error(code, out, err, "metadata file not found")
    assert not (tmp_path / "runs").exists()  # not even an empty --output-path


def test_unwritable_output_path(run_main, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out, err = run_main("--dataset-path", str(SAMPLE), "--output-path", str(blocker / "runs"))
    _assert_one_line_error(code, out, err, "is not writable")
    assert blocker.read_text() == "not a folder"


def test_missing_restore_checkpoint(run_main, tmp_path):
    code, out, err = run_main("--dataset-path", str(SAMPLE), "--restore-path", str(tmp_path / "x.pth"))
    _assert_one_line_error(code, out, err, "no such checkpoint file")


# What `python -m trainer.distribute --script train_ruslan_glowtts.py --gpus 0,1 -- ARGS` runs per GPU:
# script, --continue_path=, --restore_path=, --group_id=group_<time>, --use_ddp=true, ARGS, --rank=N.
def _distributed_argv(user_args: list[str], rank: int, continue_path: str = "") -> list[str]:
    return [
        f"--continue_path={continue_path}",
        "--restore_path=",
        "--group_id=group_2026_11_28-001122",
        "--use_ddp=true",
        *user_args,
        f"--rank={rank}",
    ]


def test_distribute_arguments_are_accepted(run_main):
    code, out, err = run_main(*_distributed_argv(["--preset", "safer", "--print-config"], rank=1))
    assert code == 0, err
    assert json.loads(out)["lr"] == 1e-4


def test_distribute_arguments_parse_to_ranks_and_paths(tmp_path):
    args = parse_args(_distributed_argv(["--preset", "stable"], rank=3))
    assert (args.rank, args.use_ddp, args.group_id) == (3, True, "group_2026_11_28-001122")
    assert args.continue_path is None and args.restore_path is None  # empty means not given
    args = parse_args(_distributed_argv([], rank=0, continue_path=str(tmp_path)))
    assert args.continue_path == tmp_path
    # the user's own hyphenated flag wins over distribute's empty injected one
    args = parse_args(_distributed_argv(["--continue-path", str(tmp_path)], rank=0))
    assert args.continue_path == tmp_path


def test_distributed_ranks_name_the_same_run_folder(tmp_path):
    from ruslan_glowtts.training.cli import request_from_args
    from ruslan_glowtts.training.run import ddp_run_name

    names = set()
    for rank in (0, 1):
        args = parse_args(_distributed_argv(["--dataset-path", str(SAMPLE), "--output-path", str(tmp_path)], rank))
        request = request_from_args(args)
        names.add(ddp_run_name(request))
        (tmp_path / "ruslan_glowtts-anything").mkdir(exist_ok=True)  # what exists on disk must not matter
    assert names == {"ruslan_glowtts-group_2026_11_28-001122"}
