"""`AbstractOTSolver`: the interface every entropic-OT solver implements.

How to add a solver (e.g. Sinkhorn–Newton–Sparse):

1. Subclass `AbstractOTSolver` (an `AbstractIterativeSolver` run by the core's loop) with
   fields `tol` (absolute tolerance on the L1 marginal error) and `max_steps`.
2. Implement `ot_init(y, problem) -> state`, `ot_step(y, problem, state) -> (y, state, result)`
   and `ot_error(y, problem, state) -> scalar` (usually read from the state), where
   `y = (f, g)` are the potentials and `problem` is an `OTProblem` (geometry, weights `a`,
   `b`, `tau_a`, `tau_b`, `epsilon`, and helpers: `marginals`, `targets`, `marginal_error`,
   `masked`, `dual`). The base class puts the returned potentials in the canonical gauge
   (`problem.normalise`), which the implicit derivative assumes.
3. Optionally `loop_steps()` (how many loop steps `max_steps` means, when one step does
   several sweeps) and `stats(state)` (e.g. `{"num_steps": sweeps}`).

`js.ot.solve` then runs it with `iterate`, differentiates it through `ot_optimality`
(shared by all OT solvers: same optimality function, same implicit derivative), validates
inputs and wraps the result in an `OTSolution`.
"""

import abc
from typing import Any

from jaxtyping import Array

from .._iterate import AbstractIterativeSolver
from ._problem import OTProblem


class AbstractOTSolver(AbstractIterativeSolver):
    """Base class of entropic-OT solvers (`js.ot.Sinkhorn`, Sinkhorn–Newton–Sparse, ...).

    Subclasses implement `ot_init`, `ot_step`, `ot_error` over the potentials `y = (f, g)`
    and an `OTProblem`; see the module docstring of `jaxsolve/ot/_base.py`. All of them share
    `ot_optimality`, hence the same implicit derivative.
    """

    tol: float | Array
    max_steps: int

    @abc.abstractmethod
    def ot_init(self, y, problem: OTProblem) -> Any: ...

    @abc.abstractmethod
    def ot_step(self, y, problem: OTProblem, state) -> tuple[Any, Any, Any]: ...

    @abc.abstractmethod
    def ot_error(self, y, problem: OTProblem, state) -> Array: ...

    def loop_steps(self) -> int:
        """The number of loop steps that `max_steps` allows (default: the same)."""
        return self.max_steps

    # The AbstractIterativeSolver interface, run by the core's `iterate`.
    def init(self, fn, y, args):
        return self.ot_init(y, args)

    def step(self, fn, y, args, state):
        y, state, result = self.ot_step(y, args, state)
        return args.normalise(*y), state, result

    def error(self, fn, y, args, state):
        return self.ot_error(y, args, state)
