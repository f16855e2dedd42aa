from ._job import score as score
from ._scorer import Scorer as Scorer

__version__: str
