"""jaxsolve.bilevel: hypergradients and bilevel algorithms."""

from ._aid import AID as AID
from ._algorithm import AbstractBilevelAlgorithm as AbstractBilevelAlgorithm
from ._borep import BOREP as BOREP
from ._estimators import (
    AbstractEstimator as AbstractEstimator,
    Implicit as Implicit,
    TruncatedNeumann as TruncatedNeumann,
    Unrolled as Unrolled,
)
from ._hypergradient import hypergradient as hypergradient
from ._itd import ITD as ITD
from ._lvhba import LVHBA as LVHBA
from ._penalty import Penalty as Penalty
from ._solution import BilevelSolution as BilevelSolution, Hypergradient as Hypergradient
from ._solve import solve as solve
