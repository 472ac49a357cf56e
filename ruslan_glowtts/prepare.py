"""`python -m ruslan_glowtts.prepare`: prepare a RUSLAN corpus. The documented command; the code is ruslan_glowtts/prep/prepare.py."""

if __name__ == "__main__":
    from ruslan_glowtts.prep.prepare import run_as_script

    run_as_script()
