"""Stage 1, RUSLAN as downloaded -> training-ready folder: metadata, text normalisation, audio audit
and conversion, length limits, the feature cache, the report and the resumable state of a run.
The command is `python -m ruslan_glowtts.prepare`."""
