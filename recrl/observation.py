"""The observation spec every recrl environment writes and every policy reads."""

#: Observation keys the encoder reads (written by every recrl environment).
HISTORY_KEYS = ["history", "history_response", "history_watch_time"]
