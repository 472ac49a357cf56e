"""`python -m ruslan_glowtts.synthesize`: speak text with a trained run. The documented command; the code is ruslan_glowtts/voice/synthesize.py."""

if __name__ == "__main__":
    from ruslan_glowtts.voice.synthesize import run_as_script

    run_as_script()
