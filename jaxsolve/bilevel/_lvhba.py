"""LV-HBA: constrained lower levels by the proximal Lagrangian value function (Yao et al. 2024)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from .._functions import function_as_data
from .._iterate import tree_norm
from ._algorithm import AbstractBilevelAlgorithm


class _LVHBAState(eqx.Module):
    y: object  # the upper-level copy of the lower-level variable
    w: object  # θ in the paper: the proximal lower-level variable
    z: Array  # the multiplier proxy
    lam: Array  # the lower-level multiplier λ


def _identity(x, *_):
    return x


class LVHBA(AbstractBilevelAlgorithm):
    """LV-HBA (Yao, Xu, Zhang, Gao, Zhang, "Constrained Bi-Level Optimization: Proximal
    Lagrangian Value Function Approach and Hessian-free Algorithm", ICLR 2024).

    For lower levels with constraints that may couple both levels,
    `y*(x) ∈ argmin_y { G(x, y) : g(x, y) ≤ 0 }`, the lower level is replaced by the constraint
    `G(x, y) − v_γ(x, y, z) ≤ 0` with the proximal Lagrangian value function
    `v_γ(x, y, z) = min_θ max_{λ≥0} G(x, θ) + λᵀg(x, θ) + ‖θ − y‖²/(2γ₁) − ‖λ − z‖²/(2γ₂)`.
    One single loop, first-order only (no Hessians, no Hessian–vector products), no strong
    convexity needed. Per outer step `k`, with `c_k = c₀ (k+1)^p`:

    - `θ ← Π_Y(θ − η (∇_y G(x, θ) + ∇_y λᵀg(x, θ) + (θ − y)/γ₁))`,
      `λ ← max(0, z + γ₂ g(x, θ))`
    - `d_x = ∇_x F(x, y)/c_k + ∇_x G(x, y) − ∇_x G(x, θ) − ∇_x λᵀg(x, θ)` (returned to the
      optax optimiser: `optax.sgd(α)` is the paper's step)
    - `y ← Π_Y(y − α (∇_y F(x, y)/c_k + ∇_y G(x, y) − (y − θ)/γ₁))`, `z ← Π_[0,r](z − β (z − λ)/γ₂)`
    - then `project(x, y, inner_args)` onto `C = {g(x, y) ≤ 0}` (and `Y`).

    The projection onto `C` is part of the method: without it the penalised value-function gap
    is unbounded below outside `C` and the iterates can diverge. For box-like constraints a
    clip is exact; otherwise pass a map to a feasible point near `(x, y)`.

    The metrics add `constraint_violation` (`max(g(x, y))₊` at the step's `(x, y)`; zero
    when `project` is exact), `lower_violation` (`max(g(x, θ))₊` at the proximal lower-level
    point) and `multiplier_norm`; `inner_residual` is `‖y − θ‖` (zero when `y` solves the
    proximal lower level).

    **Arguments:**

    - `constraint_fn`: `g(x, y, inner_args) -> array`, feasible where `≤ 0`.
    - `alpha`: step for `y` (use the same as the optimiser's for `x`).
    - `eta`, `beta`: steps for `θ` and `z`.
    - `gamma1`, `gamma2`: the proximal parameters `γ₁`, `γ₂`.
    - `c0`, `p`: the penalty schedule `c_k = c₀ (k+1)^p` (`0 < p < 1/2`).
    - `z_max`: the box `[0, r]` for `z` (default `inf`).
    - `project_y`: `(y, inner_args) -> y` onto the simple set `Y` (default: none).
    - `project`: `(x, y, inner_args) -> (x, y)` onto `C = {g(x, y) ≤ 0}` (strongly advised;
      `None` skips it, and the constraint is then only reported).

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    # lower level: y*(x) = argmin_{y ≤ 1} (y - x)²/2 = min(x, 1); upper: (y - 2)² + (x - 2)²
    inner = lambda x, y, _: 0.5 * jnp.sum((y - x) ** 2)
    outer = lambda x, y, _: jnp.sum((y - 2.0) ** 2) + jnp.sum((x - 2.0) ** 2)
    alg = js.bilevel.LVHBA(lambda x, y, _: y - 1.0, alpha=0.05, eta=0.5, beta=0.5,
                           gamma1=1.0, gamma2=1.0, c0=1.0, p=0.3,
                           project=lambda x, y, _: (x, jnp.minimum(y, 1.0)))
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1), algorithm=alg,
                           optimiser=optax.sgd(0.05), num_steps=1000)
    assert jnp.allclose(sol.value, 2.0, atol=1e-3) and jnp.allclose(sol.y, 1.0, atol=1e-3)
    assert sol.metrics["lower_violation"][-1] < 1e-3
    ```
    """

    # User functions as data (closed-over arrays are leaves): see `function_as_data`.
    constraint_fn: Callable = eqx.field(converter=function_as_data)
    alpha: float | Array = 0.01
    eta: float | Array = 0.1
    beta: float | Array = 0.1
    gamma1: float | Array = 10.0
    gamma2: float | Array = 0.01
    c0: float | Array = 1.0
    p: float | Array = 0.3
    z_max: float | Array = float("inf")
    project_y: Callable | None = eqx.field(default=None, converter=function_as_data)
    project: Callable | None = eqx.field(default=None, converter=function_as_data)

    def __check_init__(self):
        if not callable(self.constraint_fn):
            raise TypeError(
                "LVHBA's `constraint_fn` must be callable as g(theta, y, inner_args) -> array "
                f"(feasible where <= 0); got {type(self.constraint_fn).__name__}."
            )
        for name in ("alpha", "eta", "beta", "gamma1", "gamma2", "c0"):
            val = getattr(self, name)
            if isinstance(val, (int, float)) and not val > 0:
                raise ValueError(f"LVHBA `{name}` must be positive; got {val!r}.")

    def _py(self, y, inner_args):
        return y if self.project_y is None else self.project_y(y, inner_args)

    def _lagr(self, problem, x, w, lam, inner_args):
        g = jnp.asarray(self.constraint_fn(x, w, inner_args))
        return problem.inner_fn(x, w, inner_args) + jnp.sum(lam * g)

    def init(self, problem, theta, y0, outer_args, inner_args):
        g_struct = jax.eval_shape(self.constraint_fn, theta, y0, inner_args)
        if not jnp.issubdtype(g_struct.dtype, jnp.floating):
            raise ValueError(
                f"LVHBA's `constraint_fn` must return a floating-point array; got {g_struct.dtype}."
            )
        zeros = jnp.zeros(g_struct.shape, g_struct.dtype)
        return _LVHBAState(y=y0, w=y0, z=zeros, lam=zeros)

    def step(self, problem, theta, state, outer_args, inner_args, t):
        x, y = theta, state.y
        ck = self.c0 * (t + 1.0) ** self.p
        # θ (here w): one projected gradient step on the proximal Lagrangian.
        gw = jax.grad(self._lagr, argnums=2)(problem, x, state.w, state.lam, inner_args)
        w = jtu.tree_map(
            lambda wi, gi, yi: wi - self.eta * (gi + (wi - yi) / self.gamma1), state.w, gw, y
        )
        w = self._py(w, inner_args)
        g_w = jnp.asarray(self.constraint_fn(x, w, inner_args))
        lam = jnp.maximum(state.z + self.gamma2 * g_w, 0.0)
        # Directions.
        value, (fx, fy) = jax.value_and_grad(problem.outer_fn, argnums=(0, 1))(x, y, outer_args)
        gx_y, gy_y = jax.grad(problem.inner_fn, argnums=(0, 1))(x, y, inner_args)
        lx_w = jax.grad(self._lagr, argnums=1)(problem, x, w, lam, inner_args)
        d_x = jtu.tree_map(lambda a, b, c: a / ck + b - c, fx, gx_y, lx_w)
        d_y = jtu.tree_map(
            lambda a, b, yi, wi: a / ck + b - (yi - wi) / self.gamma1, fy, gy_y, y, w
        )
        y_new = self._py(jtu.tree_map(lambda yi, di: yi - self.alpha * di, y, d_y), inner_args)
        z = jnp.clip(state.z - self.beta * (state.z - lam) / self.gamma2, 0.0, self.z_max)
        g_y = jnp.asarray(self.constraint_fn(x, y, inner_args))
        metrics = {
            "outer_loss": value,
            "inner_residual": tree_norm(jtu.tree_map(jnp.subtract, y, w)),
            "inner_converged": jnp.isfinite(tree_norm(d_x)) & jnp.isfinite(tree_norm(d_y)),
            "constraint_violation": jnp.maximum(jnp.max(g_y, initial=-jnp.inf), 0.0),
            "lower_violation": jnp.maximum(jnp.max(g_w, initial=-jnp.inf), 0.0),
            "multiplier_norm": jnp.linalg.norm(lam),
        }
        return d_x, _LVHBAState(y=y_new, w=w, z=z, lam=lam), metrics

    def after_update(self, problem, theta, state, inner_args):
        if self.project is None:
            return theta, state
        theta, y = self.project(theta, state.y, inner_args)
        return theta, eqx.tree_at(lambda s: s.y, state, y)

    def inner_value(self, state):
        return state.y
