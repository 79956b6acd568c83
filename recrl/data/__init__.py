"""Real interaction logs: readers for common formats, preprocessing, splits and downloads."""

from recrl.data.formats import DataFormatError, RawLog, read_log
from recrl.data.preprocess import (
    DataConfig, PreprocessConfig, Sequences, load_sequences, preprocess, window_positions,
)

__all__ = ["DataConfig", "DataFormatError", "PreprocessConfig", "RawLog", "Sequences", "load_sequences",
           "preprocess", "read_log", "window_positions"]
