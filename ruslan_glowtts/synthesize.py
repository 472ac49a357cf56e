"""`python -m ruslan_glowtts.synthesize`: speak text with a trained run. The documented command; the code is ruslan_glowtts/voice/synthesize.py."""

if __name__ == "__main__":
    from ruslan_glowtts.common.cli import (
        run_as_script,  # light: Ctrl-C during the tool's imports is one line
    )

    run_as_script("ruslan_glowtts.voice.synthesize")
