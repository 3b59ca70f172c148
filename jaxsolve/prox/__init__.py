"""Proximal operators: `prox(x, hyperparams, step)`."""

from ._prox import (
    elastic_net as elastic_net,
    group_l2 as group_l2,
    indicator as indicator,
    l1 as l1,
    nonnegative_l1 as nonnegative_l1,
)
