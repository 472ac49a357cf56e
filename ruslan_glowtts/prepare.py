"""`python -m ruslan_glowtts.prepare`: prepare a RUSLAN corpus. The documented command; the code is ruslan_glowtts/prep/prepare.py."""

if __name__ == "__main__":
    import os
    import signal
    import sys

    def _interrupted_while_importing(signum: int, frame: object) -> None:
        print("interrupted during start-up: nothing was written", file=sys.stderr, flush=True)
        os._exit(130)

    # Ctrl-C during the imports below (librosa, Coqui: seconds) is one line too; prepare's main
    # installs its own handlers once it starts.
    signal.signal(signal.SIGINT, _interrupted_while_importing)
    from ruslan_glowtts.prep.prepare import run_as_script

    run_as_script()
