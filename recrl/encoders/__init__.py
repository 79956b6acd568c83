"""State encoders: user history -> state vector, and catalogue scoring tied to the item table."""

from recrl.encoders.bert import HistoryEncoder
from recrl.encoders.scorer import HistoryScorer, ItemScorer

__all__ = ["HistoryEncoder", "HistoryScorer", "ItemScorer"]
