"""Open TensorBoard on the training runs and print what their curves mean.

    python view_tensorboard.py                  # the latest run under runs/
    python view_tensorboard.py runs --all       # every run under runs/
    python view_tensorboard.py RUNS --port 6010

Binds 127.0.0.1 (this machine only) unless --host says otherwise; picks a free port if the one
asked for is busy; Ctrl-C stops it. See README.md, "Watch a run".
"""

import sys

if __name__ == "__main__":
    try:
        from ruslan_glowtts.common.cli import run_as_script  # light; from here on the guard has Ctrl-C
    except KeyboardInterrupt:  # Ctrl-C within the first milliseconds: still one line, no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    run_as_script("ruslan_glowtts.monitor.tensorboard_launcher", interrupted="interrupted")
