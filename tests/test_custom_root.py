"""custom_root / custom_fixed_point around user solvers of every kind: Python loops,
lax.while_loop, optax loops; closed-over arrays; jvp vs vjp; second order."""

import jax
import jax.numpy as jnp
import lineax as lx
import optax
import pytest

import jaxsolve as js

A = jax.random.normal(jax.random.PRNGKey(0), (5, 5))
A = A @ A.T + 5 * jnp.eye(5)


def quad_grad(y, b):  # optimality of min 0.5 y'Ay - b'y: Ay - b
    return A @ y - b


def python_loop_solver(y, b):  # gradient descent, a data-dependent Python loop
    step = 1.0 / float(jnp.linalg.norm(A, 2))
    for _ in range(2000):
        g = A @ y - b
        if float(jnp.linalg.norm(g)) < 1e-13:
            break
        y = y - step * g
    return y


def while_loop_solver(y, b):
    step = 1.0 / jnp.linalg.norm(A, 2)

    def body(c):
        y, k = c
        return y - step * (A @ y - b), k + 1

    return jax.lax.while_loop(
        lambda c: (jnp.linalg.norm(A @ c[0] - b) > 1e-13) & (c[1] < 5000), body, (y, 0)
    )[0]


def optax_solver(y, b):
    opt = optax.lbfgs()
    f = lambda y: 0.5 * y @ A @ y - b @ y
    vg = optax.value_and_grad_from_state(f)

    def body(_, c):
        y, s = c
        v, g = vg(y, state=s)
        u, s = opt.update(g, s, y, value=v, grad=g, value_fn=f)
        return optax.apply_updates(y, u), s

    return jax.lax.fori_loop(0, 100, body, (y, opt.init(y)))[0]


B = jnp.arange(1.0, 6.0)
EXACT_J = jnp.linalg.inv(A)


@pytest.mark.parametrize("solver", [python_loop_solver, while_loop_solver, optax_solver])
@pytest.mark.parametrize(
    "linear_solver",
    [
        None,
        lx.CG(rtol=1e-12, atol=1e-12),
        lx.GMRES(rtol=1e-12, atol=1e-12),
        lx.BiCGStab(rtol=1e-12, atol=1e-12),
        lx.LU(),
    ],
    ids=["auto", "cg", "gmres", "bicgstab", "lu"],
)
def test_jacobian_of_user_solver(solver, linear_solver):
    if solver is python_loop_solver and linear_solver is not None:
        pytest.skip("the Python-loop solver is slow; one linear solver suffices for it")
    tags = frozenset({lx.positive_semidefinite_tag, lx.symmetric_tag})
    s = js.custom_root(quad_grad, linear_solver=linear_solver, tags=tags)(solver)
    J = jax.jacrev(lambda b: s(jnp.zeros(5), b))(B)
    assert jnp.allclose(J, EXACT_J, atol=1e-9)


def test_python_loop_solver_works_eagerly_under_grad():
    s = js.custom_root(quad_grad)(python_loop_solver)
    g = jax.grad(lambda b: jnp.sum(s(jnp.zeros(5), b)))(B)
    assert jnp.allclose(g, EXACT_J.sum(0), atol=1e-9)


def test_jvp_matches_vjp():
    s = js.custom_root(quad_grad)(while_loop_solver)
    f = lambda b: s(jnp.zeros(5), b)
    assert jnp.allclose(jax.jacfwd(f)(B), jax.jacrev(f)(B), atol=1e-10)


def test_closed_over_array_gets_its_gradient():
    # The matrix M is closed over by the optimality function (JAXopt cannot do this).
    def loss(M):
        opt = lambda y, b: M @ y - b

        @js.custom_root(opt)
        def solve(y, b):
            return jnp.linalg.solve(jax.lax.stop_gradient(M), b)

        return jnp.sum(solve(jnp.zeros(5), B) ** 2)

    g = jax.grad(loss)(A)
    g_true = jax.grad(lambda M: jnp.sum(jnp.linalg.solve(M, B) ** 2))(A)
    assert jnp.allclose(g, g_true, atol=1e-10)


def test_second_order_hvp():
    # Outer loss of the solution of a nonlinear root problem y**3 + y = b.
    opt = lambda y, b: y**3 + y - b

    @js.custom_root(opt)
    def solve(y, b):
        return jax.lax.fori_loop(0, 50, lambda _, y: y - (y**3 + y - b) / (3 * y**2 + 1), y)

    unrolled = lambda b: jnp.sum(
        jnp.sin(
            jax.lax.fori_loop(0, 50, lambda _, y: y - (y**3 + y - b) / (3 * y**2 + 1), jnp.zeros(3))
        )
    )
    loss = lambda b: jnp.sum(jnp.sin(solve(jnp.zeros(3), b)))
    b, v = jnp.array([0.5, 2.0, -1.0]), jnp.array([1.0, -2.0, 0.5])
    hvp = jax.jvp(jax.grad(loss), (b,), (v,))[1]
    assert jnp.allclose(hvp, jax.jvp(jax.grad(unrolled), (b,), (v,))[1], atol=1e-9)
    assert jnp.allclose(jax.hessian(loss)(b), jax.hessian(unrolled)(b), atol=1e-9)


def test_has_aux_and_custom_fixed_point():
    T = lambda h, theta: 0.5 * jnp.tanh(h) + theta

    @js.custom_fixed_point(T, has_aux=True)
    def eq(h, theta):
        h = jax.lax.fori_loop(0, 80, lambda _, h: T(h, theta), h)
        return h, {"iters": 80}

    theta = jnp.array([0.3, -0.2])
    h, aux = eq(jnp.zeros(2), theta)
    assert aux["iters"] == 80
    J = jax.jacobian(lambda t: eq(jnp.zeros(2), t)[0])(theta)
    assert jnp.allclose(J, jnp.diag(1 / (1 - 0.5 / jnp.cosh(h) ** 2)), atol=1e-8)


def test_neumann_linear_solver_for_fixed_point():
    T = lambda h, theta: 0.5 * jnp.tanh(h) + theta
    solve = js.custom_fixed_point(T, linear_solver=js.Neumann(steps=60, alpha=1.0))(
        lambda h, t: jax.lax.fori_loop(0, 80, lambda _, h: T(h, t), h)
    )
    theta = jnp.array([0.3, -0.2])
    h = solve(jnp.zeros(2), theta)
    J = jax.jacobian(lambda t: solve(jnp.zeros(2), t))(theta)
    assert jnp.allclose(J, jnp.diag(1 / (1 - 0.5 / jnp.cosh(h) ** 2)), atol=1e-8)
