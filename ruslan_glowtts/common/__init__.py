"""What every stage shares: errors and exit codes, atomic files, run folders, the stability presets
and the next-step commands, the start-up guard and per-process tuning. Imports nothing heavy."""
