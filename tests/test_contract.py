"""The reliability contract, checked the same way for every solver of every family.

For each case: a solve under `jit`; a `vmap` over a batch with one bad member (NaN data, or an
invalid value), whose good members give exactly their unbatched answers and whose bad member
gets the expected result code; `jax.grad` with `throw=False` over that batch, which never
raises; `throw=True` on the bad member, which raises; and new data of the same shape, which
compiles nothing.

Compilation dominates (CI time): per case, one jitted unbatched solve with `throw=True` serves
the unbatched answers (a good member does not raise), the raise on the bad member and the
recompilation check, and one jitted `vmap` of `value_and_grad` with `throw=False` (the
solutions as its aux output) serves both the batched answers and the gradients.
"""

import logging

import jax
import jax.numpy as jnp
import pytest

import jaxsolve as js

R = js.RESULTS
N = 4
F32 = not jax.config.read("jax_enable_x64")
RTOL = 1e-4 if F32 else 1e-6


def _data(key, bad):
    """A well-posed problem's data; `bad` puts a NaN in it."""
    k1, k2 = jax.random.split(key)
    M = jax.random.normal(k1, (N, N)) / jnp.sqrt(N)
    A = M @ M.T + jnp.eye(N)  # symmetric positive definite, well conditioned
    b = jax.random.normal(k2, (N,))
    return A, jnp.where(bad, b.at[0].set(jnp.nan), b)


def _minimise(solver, **kw):
    def solve(data, throw):
        A, b = data
        fn = lambda y, d: 0.5 * y @ d[0] @ y - d[1] @ y
        return js.minimise(fn, jnp.zeros(N), (A, b), solver=solver, throw=throw, **kw)

    return solve


def _root(solver):
    def solve(data, throw):
        fn = lambda y, d: d[0] @ y + 0.1 * jnp.tanh(y) - d[1]
        return js.root_find(fn, jnp.zeros(N), data, solver=solver, throw=throw)

    return solve


def _fixed_point(solver, **kw):
    def solve(data, throw):
        A, b = data
        T = lambda y, d: 0.5 * jnp.tanh(d[0] @ y / jnp.linalg.norm(d[0])) + d[1]
        return js.fixed_point(T, jnp.zeros(N), (A, b), solver=solver, throw=throw, **kw)

    return solve


def _linear(solver):
    def solve(data, throw):
        A, b = data
        return js.linear.solve(A, b, solver=solver, throw=throw)

    return solve


def _ot(solver):
    def solve(data, throw):
        A, b = data
        x = jnp.stack([b, jnp.arange(N, dtype=b.dtype)], axis=1)
        y = A[:, :2]
        return js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.5), solver=solver, throw=throw)

    return solve


def _barycenter(solver):
    def solve(data, throw):
        A, b = data
        t = jnp.arange(N, dtype=b.dtype) / N
        measures = jax.nn.softmax(jnp.stack([b, A[0]]), axis=1)
        C = (t[:, None] - t[None, :]) ** 2
        return js.ot.barycenter(C, measures, epsilon=0.1, solver=solver, throw=throw)

    return solve


def _hypergradient(estimator, **kw):
    def solve(data, throw):
        A, b = data
        inner = lambda th, y, d: 0.5 * y @ d[0] @ y - (d[1] + th) @ y
        outer = lambda th, y, _: jnp.sum(y**2)
        return js.bilevel.hypergradient(
            outer,
            inner,
            jnp.zeros(N),
            jnp.zeros(N),
            None,
            data,
            estimator=estimator,
            throw=throw,
            **kw,
        )

    return solve


def _qp(solver):
    def solve(data, throw):
        # min ½yᵀAy − bᵀy s.t. Σy = 1, y0 − y1 ≤ 0.5, −1 ≤ y ≤ 1 (feasible: y = 1/N)
        A, b = data
        G, h = jnp.eye(N)[:1] - jnp.eye(N)[1:2], jnp.array([0.5])
        ones = jnp.ones((1, N))
        return js.qp.solve(
            A,
            -b,
            A=ones,
            b=jnp.ones(1),
            G=G,
            h=h,
            lower=-1.0,
            upper=1.0,
            solver=solver,
            throw=throw,
        )

    return solve


def _least_squares(solver):
    def solve(data, throw):
        A, b = data
        fn = lambda y, d: d[0] @ y + 0.1 * jnp.tanh(y) - d[1]
        return js.least_squares(fn, jnp.zeros(N), data, solver=solver, throw=throw)

    return solve


def _value(sol):
    # For a hypergradient: its outer loss (differentiable through the inner solve).
    # For low-rank OT: its cost (the factors carry no derivative: envelope theorem).
    out = sol.loss if isinstance(sol, js.bilevel.Hypergradient) else sol.value
    out = sol.cost if isinstance(sol, js.ot.LowRankOTSolution) else out
    leaves = jax.tree_util.tree_leaves(out)
    return sum(jnp.sum(leaf) for leaf in leaves)


def _l1(y, args, step):
    return js.prox.l1(y, 0.1, step)


CASES = {  # built lazily, so that one family's construction error fails only its cases
    "minimise-LBFGS": lambda: _minimise(js.LBFGS()),
    "minimise-GradientDescent": lambda: _minimise(js.GradientDescent(0.3), max_steps=2000),
    "minimise-ProjectedGradient": lambda: _minimise(
        js.ProjectedGradient(js.projections.nonnegative)
    ),
    "minimise-ProximalGradient": lambda: _minimise(js.ProximalGradient(_l1)),
    "minimise-LBFGSB": lambda: _minimise(js.LBFGSB(), bounds=(-0.2, 0.3)),
    "qp-ADMM": lambda: _qp(js.qp.ADMM()),
    "least_squares-GaussNewton": lambda: _least_squares(js.GaussNewton()),
    "least_squares-LevenbergMarquardt": lambda: _least_squares(js.LevenbergMarquardt()),
    "root_find-Newton": lambda: _root(js.Newton()),
    "fixed_point-Anderson": lambda: _fixed_point(js.AndersonFixedPoint()),
    "fixed_point-Iteration": lambda: _fixed_point(js.FixedPointIteration(), max_steps=2000),
    "linear-CG": lambda: _linear(js.linear.CG()),
    "linear-GMRES": lambda: _linear(js.linear.GMRES()),
    "linear-BiCGStab": lambda: _linear(js.linear.BiCGStab()),
    "linear-SOR": lambda: _linear(js.linear.SOR(omega=1.2)),
    "ot-Sinkhorn": lambda: _ot(js.ot.Sinkhorn()),
    "ot-SparseNewton": lambda: _ot(js.ot.SparseNewton(tol=1e-5 if F32 else 1e-8)),
    "ot-IterativeBregman": lambda: _barycenter(js.ot.IterativeBregman()),
    "ot-LowRankSinkhorn": lambda: _ot(js.ot.LowRankSinkhorn(rank=2)),
    "bilevel-Implicit": lambda: _hypergradient(js.bilevel.Implicit()),
    "bilevel-Unrolled": lambda: _hypergradient(
        # "bounded": differentiable again (a checkpointed loop's reverse pass is not)
        js.bilevel.Unrolled(kind="bounded"),
        inner_solver=js.GradientDescent(0.3),
        inner_max_steps=300,
    ),
}

KEYS = jax.random.split(jax.random.PRNGKey(0), 3)
BAD = jnp.array([False, True, False])


def _batch():
    data = [_data(k, bad) for k, bad in zip(KEYS, BAD)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *data)


class _Case:
    """One case's solve and its jitted (unbatched with `throw=True`; batched value-and-gradient
    with `throw=False`) forms, each compiled once, on first use."""

    def __init__(self, name):
        self.name = name
        self.solve = solve = CASES[name]()
        self.single = jax.jit(lambda d: solve(d, True))
        self._batched = None

    def batched(self):
        """`(sols, grads)` over `_batch()`: the solutions, and the gradient of `_value` with
        respect to `b`, under one `jit(vmap(value_and_grad))` with `throw=False`."""
        if self._batched is None:

            def loss(b, A):
                sol = self.solve((A, b), False)
                return _value(sol), sol

            vg = jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))
            batch = _batch()
            (_, sols), grads = vg(batch[1], batch[0])
            self._batched = sols, grads
        return self._batched


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return _Case(request.param)


def test_jit_vmap_one_bad_member(case):
    name, single = case.name, case.single
    batch = _batch()
    sols, _ = case.batched()
    ok = sols.result == R.successful
    for i in (0, 2):
        alone = single(jax.tree_util.tree_map(lambda x: x[i], batch))
        assert alone.result == R.successful, (name, R[alone.result])
        assert ok[i], name
        for a, b in zip(
            jax.tree_util.tree_leaves(alone.value), jax.tree_util.tree_leaves(sols.value)
        ):
            assert jnp.allclose(a, b[i], rtol=RTOL, atol=RTOL * 1e-3), name
    assert (sols.result == R.nonfinite)[1], name


def test_grad_with_throw_false_never_raises(case):
    name = case.name
    _, grads = case.batched()
    assert jnp.all(jnp.isfinite(grads[0])) and jnp.all(jnp.isfinite(grads[2])), name


def test_throw_true_raises_on_a_bad_member(case):
    bad = _data(KEYS[1], True)
    with pytest.raises(Exception, match="NaN|nonfinite|inf"):
        jax.block_until_ready(case.single(bad).value)


def test_new_data_compiles_nothing(case):
    name, single = case.name, case.single
    single(_data(KEYS[0], False))
    single(_data(KEYS[2], False))
    assert single._cache_size() == 1, name


def test_unrolled_anderson_is_finite_when_residual_differences_vanish():
    # The second coordinate is at its fixed point after one step, so every later residual
    # difference is exactly zero there. Unrolled derivatives through Anderson's mixing must
    # stay finite and equal the implicit ones: d/dt of y1* = 2t is 2.
    T = lambda y, t: jnp.stack([0.5 * y[0] + t, jnp.ones_like(t)])
    grads = [
        jax.grad(lambda t: js.fixed_point(T, jnp.zeros(2), t, adjoint=adjoint, tol=1e-12).value[0])(
            1.0
        )
        for adjoint in (js.UnrollAdjoint(), js.ImplicitAdjoint())
    ]
    assert jnp.allclose(grads[0], 2.0) and jnp.allclose(grads[1], 2.0), grads


class _CompileCounter(logging.Handler):
    def __init__(self, program):
        super().__init__()
        self.count = 0
        self.program = program

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling") and self.program in message:
            self.count += 1


def _compiles(fn, program=""):
    """How many XLA compilations `fn()` triggers (JAX logs each one with log_compiles on), of
    programs whose name contains `program` (default: any)."""
    counter = _CompileCounter(program)
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles(True):
            jax.block_until_ready(fn())
    finally:
        logger.removeHandler(counter)
    return counter.count


def _quadratic(y, _):  # defined once: a new lambda per call is a new function, compiled anew
    return jnp.sum((y - 1) ** 2)


def _half_cos(y, _):
    return 0.5 * jnp.cos(y)


def _outer(th, y, _):
    return jnp.sum(y**2)


def _inner(th, y, _):
    return jnp.sum((y - th) ** 2)


def _solve_closure(M):
    return js.linear.solve(lambda v: M @ v, jnp.ones(3)).value


_X, _Y = jnp.linspace(0, 1, 10).reshape(5, 2), jnp.linspace(1, 2, 8).reshape(4, 2)
_A = 4 * jnp.eye(3) + 0.5
HYPERPARAMETERS = {
    "PointCloud epsilon": lambda h: js.ot.solve(js.ot.PointCloud(_X, _Y, epsilon=h)).f,
    "Geometry epsilon": lambda h: js.ot.solve(js.ot.Geometry(_A, epsilon=h)).f,
    "Sinkhorn tol": lambda h: (
        js.ot.solve(js.ot.Geometry(_A, epsilon=0.5), solver=js.ot.Sinkhorn(tol=h * 1e-5)).f
    ),
    "SOR omega": lambda h: js.linear.solve(_A, jnp.ones(3), js.linear.SOR(omega=1 + h)).value,
    "SSOR omega": lambda h: js.linear.solve(_A, jnp.ones(3), js.linear.SSOR(omega=1 + h)).value,
    "CG tol": lambda h: js.linear.solve(_A, jnp.ones(3), js.linear.CG(tol=h * 1e-6)).value,
    # a new closure of the same code over a new array: the same program
    "matvec closure": lambda h: _solve_closure(_A + h),
    "learning rate": lambda h: (
        js.minimise(_quadratic, jnp.zeros(2), solver=js.GradientDescent(h)).value
    ),
    "minimise tol": lambda h: js.minimise(_quadratic, jnp.zeros(2), tol=h * 1e-6).value,
    "Anderson mixing": lambda h: (
        js.fixed_point(_half_cos, jnp.zeros(2), solver=js.AndersonFixedPoint(mixing=h)).value
    ),
    "EpsilonScaling decay": lambda h: (
        js.ot.solve(
            js.ot.Geometry(_A, epsilon=0.5),
            solver=js.ot.Sinkhorn(epsilon_scaling=js.ot.EpsilonScaling(decay=h)),
        ).f
    ),
    "hypergradient inner learning rate": lambda h: (
        js.bilevel.hypergradient(
            _outer, _inner, jnp.ones(2), jnp.zeros(2), inner_solver=js.GradientDescent(h)
        ).grad
    ),
    "TruncatedNeumann alpha": lambda h: (
        js.bilevel.hypergradient(
            _outer,
            _inner,
            jnp.ones(2),
            jnp.zeros(2),
            estimator=js.bilevel.TruncatedNeumann(alpha=h),
        ).grad
    ),
    "hypergradient inner_tol": lambda h: (
        js.bilevel.hypergradient(
            _outer,
            _inner,
            jnp.ones(2),
            jnp.zeros(2),
            inner_tol=h * 1e-6,
        ).grad
    ),
    "QuadraticOT gamma": lambda h: js.ot.solve_smooth(_A, solver=js.ot.QuadraticOT(gamma=h)).f,
    "QuadraticOT tol": lambda h: js.ot.solve_smooth(_A, solver=js.ot.QuadraticOT(tol=h * 1e-6)).f,
    "barycenter epsilon": lambda h: js.ot.barycenter(_A, jnp.full((2, 3), 1 / 3), epsilon=h).value,
    "sinkhorn_divergence epsilon": lambda h: js.ot.sinkhorn_divergence(_X, _Y, epsilon=h),
}


@pytest.mark.parametrize("name", sorted(HYPERPARAMETERS))
def test_new_python_float_hyperparameters_compile_nothing(name):
    solve = HYPERPARAMETERS[name]
    _compiles(lambda: solve(0.3))
    assert _compiles(lambda: solve(0.5)) == 0, name


def test_epsilon_as_a_float_or_an_array_is_one_program():
    # A Python float, a weakly typed array (jnp.asarray(0.7)) and a strongly typed one give ε
    # the same type inside the solve: one compiled solve for all three.
    solve = lambda e: js.ot.solve(js.ot.Geometry(_A, epsilon=e)).f
    _compiles(lambda: solve(0.5))
    weak = jnp.asarray(0.7)
    strong = jnp.asarray(0.6, _A.dtype)
    assert _compiles(lambda: solve(weak), "jit(_solve)") == 0
    assert _compiles(lambda: solve(strong), "jit(_solve)") == 0
