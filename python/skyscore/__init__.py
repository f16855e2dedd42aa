"""skyscore: score SFT data with Skywork-Reward-V2 reward models.

- :class:`Scorer` loads a model once and scores Python lists, Arrow tables, record batch
  readers, polars and datafusion DataFrames (anything with ``__arrow_c_stream__``).
- :func:`score` runs the command line's ``skyscore score`` job: a file in, a file out, with
  resume through the score store.
- :mod:`skyscore.datafusion` registers ``skywork_score`` and ``skywork_score_chat`` on a
  datafusion-python ``SessionContext``.
"""

from ._skyscore import __version__
from ._scorer import Scorer
from ._job import score

__all__ = ["Scorer", "score", "__version__"]
