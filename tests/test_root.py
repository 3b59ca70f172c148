"""root_find and fixed_point: closed-form solutions and derivatives, Anderson's iteration count."""

import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import jaxsolve as js


def cube(y, a):
    return y**3 - a


def test_root_find_newton_and_gradient():
    a = jnp.array([8.0, 27.0, 2.0])
    sol = js.root_find(cube, jnp.ones(3), a)
    assert sol.result == js.RESULTS.successful
    assert jnp.allclose(sol.value, jnp.cbrt(a), rtol=1e-12)
    J = jax.jacobian(lambda a: js.root_find(cube, jnp.ones(3), a).value)(a)
    assert jnp.allclose(J, jnp.diag(1 / (3 * jnp.cbrt(a) ** 2)), rtol=1e-10)


def test_root_find_line_search_globalises():
    # arctan's Newton iteration diverges from |y0| > 1.39 without a line search.
    sol = js.root_find(lambda y, _: jnp.arctan(y), jnp.array([3.0]), tol=1e-12)
    assert sol.result == js.RESULTS.successful and jnp.abs(sol.value[0]) < 1e-12


def contraction(h, theta):
    return 0.5 * jnp.tanh(h) + theta


@pytest.mark.parametrize("solver", [js.AndersonFixedPoint(), js.FixedPointIteration(damping=0.8)])
def test_fixed_point_and_jacobian(solver):
    theta = jnp.array([0.3, -0.2, 1.0])
    sol = js.fixed_point(contraction, jnp.zeros(3), theta, solver=solver, tol=1e-12)
    h = sol.value
    assert jnp.allclose(h, contraction(h, theta), atol=1e-12)
    J = jax.jacrev(lambda t: js.fixed_point(contraction, jnp.zeros(3), t, solver=solver).value)(
        theta
    )
    assert jnp.allclose(J, jnp.diag(1 / (1 - 0.5 / jnp.cosh(h) ** 2)), atol=1e-8)


def test_anderson_step_counts():
    # A symmetric linear contraction, spectrum in [-0.95, 0.95]. Plain iteration needs
    # ~log(tol)/log(0.95) steps; Anderson with history >= n is GMRES: at most n + 1 steps.
    Q = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (20, 20)))[0]
    A = Q @ jnp.diag(jnp.linspace(-0.95, 0.95, 20)) @ Q.T
    T = lambda y, b: A @ y + b
    b = jnp.ones(20)
    exact = jnp.linalg.solve(jnp.eye(20) - A, b)
    plain = js.fixed_point(
        T, jnp.zeros(20), b, solver=js.FixedPointIteration(), tol=1e-10, max_steps=5000
    )
    assert int(plain.stats["num_steps"]) > 400
    short = js.fixed_point(T, jnp.zeros(20), b, solver=js.AndersonFixedPoint(history=10), tol=1e-10)
    assert int(short.stats["num_steps"]) * 5 < int(plain.stats["num_steps"])
    full = js.fixed_point(T, jnp.zeros(20), b, solver=js.AndersonFixedPoint(history=20), tol=1e-10)
    assert int(full.stats["num_steps"]) <= 21
    assert jnp.allclose(full.value, exact, atol=1e-12)


def test_fixed_point_with_gmres_and_neumann_adjoints():
    W = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (6, 6)) / jnp.sqrt(6.0)
    T = lambda h, b: jnp.tanh(W @ h + b)
    b = jnp.linspace(-1, 1, 6)
    base = jax.grad(lambda b: js.fixed_point(T, jnp.zeros(6), b, tol=1e-12).value.sum())(b)
    for ls in [lx.GMRES(rtol=1e-12, atol=1e-12), js.Neumann(steps=200, alpha=1.0)]:
        g = jax.grad(
            lambda b: js.fixed_point(
                T, jnp.zeros(6), b, tol=1e-12, adjoint=js.ImplicitAdjoint(ls)
            ).value.sum()
        )(b)
        assert jnp.allclose(g, base, atol=1e-9)
    unrolled = jax.grad(
        lambda b: js.fixed_point(
            T,
            jnp.zeros(6),
            b,
            solver=js.FixedPointIteration(),
            tol=1e-13,
            max_steps=200,
            adjoint=js.UnrollAdjoint(),
        ).value.sum()
    )(b)
    assert jnp.allclose(unrolled, base, atol=1e-9)


class _Bisection(js.AbstractRootFinder):
    """A user's own root finder for scalar increasing F: bisection on [lo, hi], no derivatives
    of its own. It runs through js.root_find and gets implicit derivatives."""

    lo: float = -10.0
    hi: float = 10.0
    tol: float | None = None

    def init(self, problem, y, options):
        return jnp.asarray(self.lo, y.dtype), jnp.asarray(self.hi, y.dtype)

    def step(self, problem, y, state):
        lo, hi = state
        mid = 0.5 * (lo + hi)
        up = problem.fn(mid, problem.args) > 0
        lo, hi = jnp.where(up, lo, mid), jnp.where(up, mid, hi)
        return 0.5 * (lo + hi), (lo, hi)

    def error(self, problem, y, state):
        return jnp.abs(problem.fn(y, problem.args))


def test_user_written_root_finder_gets_implicit_derivatives():
    F = lambda y, a: y**3 + y - a  # increasing: one real root
    solve = lambda a: js.root_find(F, jnp.array(0.0), a, solver=_Bisection(), tol=1e-12).value
    a = 3.0
    y = solve(a)
    assert abs(F(y, a)) < 1e-11
    # implicit function theorem by hand: dy/da = 1 / (3 y² + 1)
    assert jnp.allclose(jax.grad(solve)(a), 1 / (3 * y**2 + 1), rtol=1e-8)
    _, tangent = jax.jvp(solve, (a,), (1.0,))
    assert jnp.allclose(tangent, 1 / (3 * y**2 + 1), rtol=1e-8)
    ys = jax.vmap(solve)(jnp.array([0.0, 2.0, 10.0]))
    assert jnp.allclose(ys, jnp.array([0.0, 1.0, 2.0]), atol=1e-10)
    with pytest.raises(TypeError, match="AbstractRootFinder"):
        js.root_find(F, jnp.array(0.0), a, solver=js.LBFGS())
