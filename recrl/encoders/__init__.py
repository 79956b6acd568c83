"""State encoders: user history -> state vector, and catalogue scoring tied to the item table.

`HistoryEncoderBase` (base.py) holds what every encoder shares (item table, tokens, state token,
``init_from``); a backbone subclass reads the tokens: BERT (`HistoryEncoder`, bert.py, the
default). Other backbones live in modules of their own, which their ``conf/encoder/*.yaml``
names by ``_target_``. `ItemScorer` and `HistoryScorer` (scorer.py) score the catalogue on top of
any of them.
"""

from recrl.encoders.base import HistoryEncoderBase
from recrl.encoders.bert import HistoryEncoder
from recrl.encoders.scorer import HistoryScorer, ItemScorer, RepeatBias, ScoreWithHistory

__all__ = ["HistoryEncoder", "HistoryEncoderBase", "HistoryScorer", "ItemScorer", "RepeatBias",
           "ScoreWithHistory"]
