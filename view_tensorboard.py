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
        from ruslan_glowtts.monitor.tensorboard_launcher import main
    except KeyboardInterrupt:  # Ctrl-C within the first second: still one line, no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
