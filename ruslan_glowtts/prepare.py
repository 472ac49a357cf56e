"""`python -m ruslan_glowtts.prepare`: prepare a RUSLAN corpus. The documented command; its CLI is ruslan_glowtts/prep/cli.py."""

if __name__ == "__main__":
    from ruslan_glowtts.common.cli import (
        run_as_script,  # light: Ctrl-C during the tool's imports is one line
    )

    run_as_script("ruslan_glowtts.prep.cli")
