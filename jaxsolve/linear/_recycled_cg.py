"""Recycled CG for sequences of symmetric positive definite systems: CG preconditioned by a
spectral low-rank update built from Ritz vectors carried from one solve to the next."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._checks import check_max_steps, check_tol
from .._solution import Solution
from .._tree import tree_ravel
from ._cg import CGIteration
from ._common import DEFAULT_MAX_STEPS, LinearProblem, linear_default_tol, run_iteration
from ._solve import as_vector, flat_system


class RitzSpace(eqx.Module):
    """What `RecycledCG` carries between solves (a pytree: carry it through `lax.scan`):
    `W` — `k` orthonormal approximate eigenvectors (rows, shaped like `b` flattened; a
    pytree `b` is flattened too),
    `theta` — their Ritz values, `valid` — which rows hold a vector, `count` — solves so far.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    space = js.linear.RecycledCG(recycle=3).init(jnp.ones(8))
    assert space.W.shape == (3, 8) and not bool(space.valid.any())
    ```
    """

    W: Array  # (k, n)
    theta: Array  # (k,)
    valid: Array  # (k,) bool
    count: Array  # int


class _Spectral(eqx.Module):
    """`M⁻¹ = S (I + Wᵀ diag(factor) W) S`, with `S = D^{-1/2}` (jacobi=True) or `I`."""

    W: Array
    factor: Array
    scale: Array | None

    def __call__(self, r):
        if self.scale is None:
            return r + (self.factor * (self.W @ r)) @ self.W
        r = self.scale * r
        return self.scale * (r + (self.factor * (self.W @ r)) @ self.W)


def _rayleigh_ritz(Z, AZ, k):
    """The `k` Ritz pairs of smallest Ritz value of a symmetric `A` on the span of the rows of
    `Z` (with `AZ` their images); rows that are zero or dependent are ignored."""
    G = Z @ Z.T
    F = Z @ AZ.T
    F = 0.5 * (F + F.T)
    g, V = jnp.linalg.eigh(G)
    good = g > 1e-10 * jnp.max(g)
    Bw = V * jnp.where(good, 1 / jnp.sqrt(jnp.where(good, g, 1)), 0)  # columns: G-whitening
    Fw = Bw.T @ F @ Bw
    big = 1e30 * (1 + jnp.max(jnp.abs(Fw)))
    Fw = jnp.where(good[:, None] & good[None, :], Fw, 0) + jnp.diag(jnp.where(good, 0, big))
    theta, Y = jnp.linalg.eigh(0.5 * (Fw + Fw.T))
    theta, Y = theta[:k], Y[:, :k]
    W = (Bw @ Y).T @ Z
    valid = (theta < big / 2) & (theta > 0)
    return jnp.where(valid[:, None], W, 0), jnp.where(valid, theta, 1), valid


class RecycledCG(eqx.Module):
    """CG that gets faster over a sequence of related symmetric positive definite systems by
    recycling approximate eigenvectors of the smallest eigenvalues — the modes that make CG
    slow — from one solve to the next.

    Each solve runs CG preconditioned by the spectral low-rank update
    `M⁻¹ = I + Σᵢ (σ/θᵢ − 1) wᵢ wᵢᵀ` (σ = the largest carried Ritz value), which moves the
    carried eigenvalues `θᵢ` of `A` to `σ` (the spectral preconditioner of Carpentieri, Duff &
    Giraud 2003, updated incrementally over a sequence as in Giraud, Gratton & Martin 2007). It
    costs no matrix–vector product and stays symmetric positive definite whatever the quality
    of the carried vectors, so every solve converges to the same tolerance as plain CG. After
    the solve (every `refresh`-th system) a Rayleigh–Ritz step on the span of the carried
    vectors and the first `harvest` search directions (whose images CG already computed) gives
    the `k` new Ritz pairs: this costs `k` matvecs (the images of the carried vectors under the
    current `A`), counted in `num_matvecs`. This is recycling for CG in the sense of deflated
    CG (Saad, Yeung, Erhel & Guyomarc'h 2000) without re-projecting on every new `A`.

    Pure: `space = rcg.init(b)` then `sol, space = rcg.solve(A, b, space)` for each system, in
    a Python loop or `lax.scan`. `sol.stats` has `num_steps`, `num_matvecs` (everything,
    including the harvest and the final true-residual check) and `error` (the true
    `‖b − Ax‖/‖b‖`). With `jacobi=True`, a non-positive diagonal gives
    `RESULTS.invalid_input` (per system under `vmap`) and leaves the space unchanged. Not
    differentiable (use `js.linear.solve` for a differentiable solve).

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the largest number of CG iterations per system.
    - `recycle`: `k`, the number of vectors carried (at most the system size).
    - `harvest`: the number of search directions kept for the Rayleigh–Ritz step (default `2k`).
    - `refresh`: update the carried vectors after every `refresh`-th solve (1: every solve).
    - `jacobi`: build the update on top of Jacobi scaling, `M⁻¹ = D^{-1/2} (I + Σᵢ (σ/θᵢ − 1)
      wᵢ wᵢᵀ) D^{-1/2}` with `D = diag(A)` of the current system (read with
      `lineax.diagonal`: free for matrices and `Stencil5`), so the carried vectors are Ritz
      vectors of `D^{-1/2} A D^{-1/2}`. For variable-coefficient problems (Darcy), where Jacobi
      alone already helps; compare it with Jacobi-PCG. Default `False`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    rcg = js.linear.RecycledCG(tol=1e-6, recycle=4)
    b = jnp.ones((8, 8))
    space = rcg.init(b)
    counts = []
    for c in [0.0, 0.01, 0.02]:
        A = js.linear.Stencil5.poisson((8, 8), shift=c)
        sol, space = rcg.solve(A, b, space)
        assert jnp.allclose(A.mv(sol.value), b, atol=1e-5)
        counts.append(int(sol.stats["num_steps"]))
    assert counts[-1] < counts[0]
    ```

    With Jacobi scaling, on a sequence of Darcy problems `−∇·(a∇u) = b` whose coefficient
    drifts, against Jacobi-PCG from scratch (every matvec counted, refreshes included):

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    # tol 1e-4: what float32 resolves on this badly conditioned Darcy system
    rcg = js.linear.RecycledCG(tol=1e-4, recycle=8, jacobi=True)
    pcg = js.linear.CG(tol=1e-4, preconditioner=js.linear.JacobiPreconditioner())
    g, h = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12))
    b = jnp.ones((12, 12))
    space = rcg.init(b)
    ours = ref = 0
    for i in range(4):
        A = js.linear.Stencil5.darcy(jnp.exp(2 * g + 0.1 * i * h))
        sol, space = rcg.solve(A, b, space)
        assert jnp.linalg.norm(A.mv(sol.value) - b) <= 1e-4 * jnp.linalg.norm(b)
        ours += int(sol.stats["num_matvecs"])
        ref += int(js.linear.solve(A, b, pcg).stats["num_matvecs"])
    assert ours < ref
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)
    recycle: int = eqx.field(static=True, default=20)
    harvest: int | None = eqx.field(static=True, default=None)
    refresh: int = eqx.field(static=True, default=1)
    jacobi: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.tol is not None:
            check_tol(self.tol)
        check_max_steps(self.max_steps)
        for name in ("recycle", "refresh"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"RecycledCG needs a positive int `{name}`; got {v!r}.")
        if not isinstance(self.jacobi, bool):
            raise TypeError(f"`jacobi` must be a bool; got {self.jacobi!r}.")
        if self.harvest is not None and (not isinstance(self.harvest, int) or self.harvest < 1):
            raise ValueError(f"`harvest` must be a positive int or None; got {self.harvest!r}.")

    def init(self, b) -> RitzSpace:
        """An empty space for systems with right-hand sides shaped like `b` (an array or a
        pytree of arrays)."""
        bf = tree_ravel(as_vector(b))[0]
        k = self.recycle
        return RitzSpace(
            jnp.zeros((k, bf.size), bf.dtype),
            jnp.ones(k, bf.dtype),
            jnp.zeros(k, bool),
            jnp.array(0, jnp.int32),
        )

    @eqx.filter_jit
    def solve(self, A, b, space: RitzSpace, x0=None) -> tuple[Solution, RitzSpace]:
        """Solve `A x = b` with the carried `space`; return the solution and the new space.
        `A`: a matrix, lineax operator or matvec callable (symmetric positive definite); `b`
        an array or a pytree of arrays."""
        op, flat, bf, x, unravel = flat_system(A, b, x0)
        b = bf
        k = self.recycle
        if k > b.size:
            raise ValueError(
                f"RecycledCG carries `recycle` = {k} vectors, more than the system size "
                f"{b.size}; use recycle <= {b.size}."
            )
        if space.W.shape != (k, b.size):
            raise ValueError(
                f"`space` holds {space.W.shape[0]} vectors of size {space.W.shape[1]}; expected "
                f"{k} vectors of size {b.size} (use rcg.init(b))."
            )
        h = 2 * k if self.harvest is None else self.harvest
        mv = flat.mv
        valid = jnp.array(True)
        if self.jacobi:
            d = jnp.asarray(lx.diagonal(op), b.dtype).reshape(-1)
            # A non-positive diagonal (A not SPD): `invalid_input` for this system only.
            valid = jnp.all(d > 0)
            scale = 1 / jnp.sqrt(jnp.where(d > 0, d, 1))
        else:
            scale = None
        theta = jnp.where(space.valid, space.theta, 1)
        sigma = jnp.max(jnp.where(space.valid, theta, -jnp.inf))
        factor = jnp.where(space.valid, sigma / theta - 1, 0)
        tol = linear_default_tol(b.dtype) if self.tol is None else self.tol
        iteration = CGIteration(
            jnp.asarray(tol, b.dtype), _Spectral(space.W, factor, scale), valid, harvest=h
        )
        sol = run_iteration(iteration, LinearProblem(flat, bf), x, self.max_steps)
        x, state, result, stats = sol.value, sol.state, sol.result, sol.stats
        # Rayleigh–Ritz on span[W, P]: k matvecs for A W (skipped when there is nothing yet).
        do = ((space.count % self.refresh) == 0) & valid
        any_valid = jnp.any(space.valid)

        # With jacobi=True the carried vectors live in the scaled coordinates x̂ = D^{1/2} x of
        # Â = D^{-1/2} A D^{-1/2}: a direction p maps to D^{1/2} p, with image D^{-1/2} A p.
        if scale is None:
            P, AP, amv = state.P, state.AP, mv
        else:
            P, AP = state.P / scale, state.AP * scale
            amv = lambda w: scale * mv(scale * w)

        def harvest(_):
            AW = jax.lax.cond(any_valid, lambda W: jax.vmap(amv)(W), jnp.zeros_like, space.W)
            Z = jnp.concatenate([space.W, P])
            AZ = jnp.concatenate([AW, AP])
            W, th, valid = _rayleigh_ritz(Z, AZ, k)
            ok = jnp.all(jnp.isfinite(W)) & jnp.all(jnp.isfinite(th))
            return (
                jnp.where(ok, W, space.W),
                jnp.where(ok, th, space.theta),
                jnp.where(ok, valid, space.valid),
            )

        W, th, valid = jax.lax.cond(
            do, harvest, lambda _: (space.W, space.theta, space.valid), None
        )
        extra = jnp.where(do & any_valid, k, 0).astype(jnp.int32)
        stats = dict(stats, num_matvecs=stats["num_matvecs"] + extra)
        sol = Solution(value=unravel(x), result=result, stats=stats)
        return sol, RitzSpace(W, th, valid, space.count + 1)
