"""`python -m ruslan_glowtts.diagnose`: diagnose a run. The documented command; the code is the package ruslan_glowtts/monitor/diagnose/."""

if __name__ == "__main__":
    from ruslan_glowtts.monitor.diagnose import run_as_script

    run_as_script()
