"""js.bilevel.solve: every algorithm reaches the known solution of a small bilevel problem;
mini-batches, vmap, failure flags, progress and bad inputs."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import jaxsolve as js

# inner: G(θ, y) = ½ yᵀQy − yᵀBθ, so y*(θ) = Q⁻¹Bθ = Mθ
# outer: F(θ, y) = ½‖y − c‖² + ½ρ‖θ‖², so θ* = (MᵀM + ρI)⁻¹Mᵀc
Q = jnp.array([[2.0, 0.5], [0.5, 1.0]])
B = jnp.array([[1.0, 0.0], [0.5, 1.0]])
C = jnp.array([1.0, -1.0])
RHO = 0.1
M = jnp.linalg.solve(Q, B)
THETA_STAR = jnp.linalg.solve(M.T @ M + RHO * jnp.eye(2), M.T @ C)


def inner(theta, y, data):
    return 0.5 * y @ Q @ y - y @ (B @ theta) + 0.0 * jnp.sum(data)


def outer(theta, y, c):
    return 0.5 * jnp.sum((y - c) ** 2) + 0.5 * RHO * jnp.sum(theta**2)


def reduced(theta):
    return outer(theta, M @ theta, C)


ZEROS = jnp.zeros(2)

ALGORITHMS = {
    "aid": (js.bilevel.AID(inner_solver=js.GradientDescent(0.4)), optax.sgd(0.5), 100, 1e-6),
    "aid_cold_adjoint": (
        js.bilevel.AID(inner_solver=js.GradientDescent(0.4), warm_start_adjoint=False),
        optax.sgd(0.5),
        100,
        1e-6,
    ),
    "itd": (js.bilevel.ITD(inner_steps=30, inner_lr=0.4), optax.sgd(0.5), 100, 1e-6),
    "penalty": (
        js.bilevel.Penalty(
            penalty=10.0,
            penalty_growth=10.0,
            max_penalty=1e4,
            inner_solver=js.GradientDescent(0.4),
            inner_steps=30,
        ),
        optax.sgd(0.05),
        400,
        2e-3,
    ),
    "borep": (
        js.bilevel.BOREP(
            nu=0.4,
            update_every=3,
            inner_steps=10,
            init_steps=100,
            inner_solver=js.GradientDescent(0.4),
        ),
        optax.sgd(optax.linear_schedule(0.05, 0.0, 400)),
        400,
        2e-2,
    ),
    "lvhba": (
        js.bilevel.LVHBA(
            lambda th, y, _: y - 10.0,
            alpha=0.3,
            eta=0.4,
            beta=0.5,
            gamma1=1.0,
            gamma2=1.0,
            c0=5.0,
            p=0.3,
            project=lambda th, y, _: (th, jnp.minimum(y, 10.0)),
        ),
        optax.sgd(0.5),
        2000,
        2e-2,
    ),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_reaches_known_solution(name):
    algorithm, optimiser, steps, tol = ALGORITHMS[name]
    theta0 = jnp.array([1.0, 1.0])
    sol = js.bilevel.solve(
        outer,
        inner,
        theta0,
        ZEROS,
        algorithm=algorithm,
        optimiser=optimiser,
        num_steps=steps,
        outer_args=C,
        inner_args=ZEROS,
    )
    assert reduced(sol.value) < reduced(theta0)
    np.testing.assert_allclose(sol.value, THETA_STAR, atol=tol)
    for key in ("outer_loss", "inner_residual", "hypergrad_norm", "inner_converged"):
        assert sol.metrics[key].shape == (steps,)
    assert sol.metrics["outer_loss"][-1] < sol.metrics["outer_loss"][0]
    if name in ("aid", "aid_cold_adjoint", "itd"):
        assert sol.result == js.RESULTS.successful
        np.testing.assert_allclose(sol.y, M @ sol.value, atol=1e-5)


def test_lvhba_coupled_constraint():
    # lower level: y*(x) = argmin_{y ≤ x} ½(y − 2)² = min(x, 2); upper: (y − 3)² + ½(x − 1)²
    # The reduced objective decreases up to x = 2 and increases after: x* = y* = 2.
    inner_c = lambda x, y, _: 0.5 * jnp.sum((y - 2.0) ** 2)
    outer_c = lambda x, y, _: jnp.sum((y - 3.0) ** 2) + 0.5 * jnp.sum((x - 1.0) ** 2)

    def project(x, y, _):  # Euclidean projection onto the half-plane y ≤ x
        mid = 0.5 * (x + y)
        return jnp.where(y > x, mid, x), jnp.where(y > x, mid, y)

    alg = js.bilevel.LVHBA(
        lambda x, y, _: y - x,
        alpha=0.1,
        eta=0.5,
        beta=0.5,
        gamma1=1.0,
        gamma2=1.0,
        c0=10.0,
        p=0.3,
        project=project,
    )
    sol = js.bilevel.solve(
        outer_c,
        inner_c,
        jnp.zeros(1),
        jnp.zeros(1),
        algorithm=alg,
        optimiser=optax.sgd(0.1),
        num_steps=2000,
    )
    np.testing.assert_allclose(sol.value, 2.0, atol=2e-2)
    np.testing.assert_allclose(sol.y, 2.0, atol=2e-2)
    assert sol.metrics["lower_violation"][-1] < 1e-2
    assert sol.metrics["constraint_violation"].max() < 1e-12  # the projection is exact


ITD_SMALL = js.bilevel.ITD(inner_steps=10, inner_lr=0.4)


def test_minibatches_equal_fixed_data_when_identical():
    steps = 20
    batches = jnp.tile(C, (steps, 1))
    kw = dict(algorithm=ITD_SMALL, optimiser=optax.sgd(0.5), num_steps=steps, inner_args=ZEROS)
    fixed = js.bilevel.solve(outer, inner, ZEROS, ZEROS, outer_args=C, **kw)
    kw["inner_args"] = jnp.zeros((steps, 2))
    batched = js.bilevel.solve(
        outer, inner, ZEROS, ZEROS, outer_args=batches, batched_args=True, **kw
    )
    np.testing.assert_allclose(batched.value, fixed.value, rtol=1e-12)
    # different batches change the run: step t really sees batch t
    noisy = batches + 0.1 * jax.random.normal(jax.random.PRNGKey(0), batches.shape)
    other = js.bilevel.solve(outer, inner, ZEROS, ZEROS, outer_args=noisy, batched_args=True, **kw)
    assert not np.allclose(other.value, fixed.value)
    np.testing.assert_allclose(other.value, THETA_STAR, atol=0.2)


def test_vmap_over_initial_hyperparameters():
    thetas = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 2.0]])

    def run(theta0):
        return js.bilevel.solve(
            outer,
            inner,
            theta0,
            ZEROS,
            algorithm=ITD_SMALL,
            optimiser=optax.sgd(0.5),
            num_steps=20,
            outer_args=C,
            inner_args=ZEROS,
        ).value

    batched = jax.vmap(run)(thetas)
    for i in range(3):
        np.testing.assert_allclose(batched[i], run(thetas[i]), rtol=1e-10, atol=1e-12)


def test_inner_not_converged_is_reported_and_thrown():
    alg = js.bilevel.AID(inner_solver=js.GradientDescent(0.4), inner_max_steps=1)
    kw = dict(algorithm=alg, optimiser=optax.sgd(0.5), num_steps=5, outer_args=C, inner_args=ZEROS)
    sol = js.bilevel.solve(outer, inner, jnp.ones(2), ZEROS, throw=False, **kw)
    assert sol.result == js.RESULTS.inner_not_converged
    assert not bool(sol.metrics["inner_converged"][0])
    with pytest.raises(Exception, match="inner solve did not converge"):
        js.bilevel.solve(outer, inner, jnp.ones(2), ZEROS, **kw).value.block_until_ready()


def test_progress_callback_and_metrics_fn():
    calls = []
    sol = js.bilevel.solve(
        outer,
        inner,
        ZEROS,
        ZEROS,
        algorithm=ITD_SMALL,
        optimiser=optax.sgd(0.5),
        num_steps=20,
        outer_args=C,
        inner_args=ZEROS,
        progress=lambda s, v: calls.append(int(s)),
        metrics_fn=lambda th, y: {"gap": jnp.sum((th - THETA_STAR) ** 2)},
    )
    jax.effects_barrier()
    assert calls and calls[-1] == 20
    assert sol.metrics["gap"].shape == (20,) and sol.metrics["gap"][-1] < sol.metrics["gap"][0]


def test_bad_inputs():
    kw = dict(optimiser=optax.sgd(0.1), num_steps=5, outer_args=C, inner_args=ZEROS)
    with pytest.raises(TypeError, match="algorithm"):
        js.bilevel.solve(outer, inner, ZEROS, ZEROS, algorithm="aid", **kw)
    with pytest.raises(TypeError, match="optimiser"):
        js.bilevel.solve(
            outer,
            inner,
            ZEROS,
            ZEROS,
            algorithm=ITD_SMALL,
            optimiser=0.1,
            num_steps=5,
            outer_args=C,
            inner_args=ZEROS,
        )
    with pytest.raises(ValueError, match="num_steps"):
        js.bilevel.solve(
            outer, inner, ZEROS, ZEROS, algorithm=ITD_SMALL, optimiser=optax.sgd(0.1), num_steps=0
        )
    with pytest.raises(ValueError, match="leading axis"):
        js.bilevel.solve(outer, inner, ZEROS, ZEROS, algorithm=ITD_SMALL, batched_args=True, **kw)
    with pytest.raises(ValueError, match="scalar"):
        js.bilevel.solve(lambda th, y, c: y, inner, ZEROS, ZEROS, algorithm=ITD_SMALL, **kw)
    with pytest.raises(TypeError, match="constraint_fn"):
        js.bilevel.LVHBA("y <= 1")
    with pytest.raises(ValueError, match="beta"):
        js.bilevel.BOREP(beta=1.5)
    with pytest.raises(ValueError, match="update_every"):
        js.bilevel.BOREP(update_every=0)
    with pytest.raises(ValueError, match="penalty"):
        js.bilevel.Penalty(penalty=-1.0)
    with pytest.raises(ValueError, match="inner_steps"):
        js.bilevel.ITD(inner_steps=0)


def test_itd_equals_an_explicit_python_loop():
    # ITD: exactly `inner_steps` warm-started gradient steps per outer step, differentiated
    # through; here written out by hand (no tolerance involved).
    lr_in, lr_out, k, steps = 0.4, 0.5, 5, 3

    def gd(theta, y):
        for _ in range(k):
            y = y - lr_in * jax.grad(inner, argnums=1)(theta, y, ZEROS)
        return y

    theta, y, losses = jnp.array([1.0, 1.0]), ZEROS, []
    for _ in range(steps):
        f = lambda th, y=y: outer(th, gd(th, y), C)
        loss, g = jax.value_and_grad(f)(theta)
        losses.append(loss)
        theta, y = theta - lr_out * g, gd(theta, y)
    sol = js.bilevel.solve(
        outer,
        inner,
        jnp.array([1.0, 1.0]),
        ZEROS,
        algorithm=js.bilevel.ITD(inner_steps=k, inner_lr=lr_in),
        optimiser=optax.sgd(lr_out),
        num_steps=steps,
        outer_args=C,
        inner_args=ZEROS,
    )
    np.testing.assert_allclose(sol.value, theta, rtol=1e-12)
    np.testing.assert_allclose(sol.y, y, rtol=1e-12)
    np.testing.assert_allclose(sol.metrics["outer_loss"], jnp.stack(losses), rtol=1e-12)


def test_solution_is_a_js_solution():
    sol = js.bilevel.solve(
        outer,
        inner,
        ZEROS,
        ZEROS,
        algorithm=ITD_SMALL,
        optimiser=optax.sgd(0.5),
        num_steps=7,
        outer_args=C,
        inner_args=ZEROS,
    )
    assert isinstance(sol, js.Solution) and sol.theta is sol.value
    assert sol.stats["num_steps"] == 7 and sol.result == js.RESULTS.successful
    np.testing.assert_allclose(sol.stats["outer_loss"], sol.metrics["outer_loss"][-1])
    np.testing.assert_allclose(sol.stats["hypergrad_norm"], sol.metrics["hypergrad_norm"][-1])


def test_adjoint_failure_is_reported():
    alg = js.bilevel.AID(
        inner_solver=js.GradientDescent(0.4),
        linear_solver=lx.CG(rtol=1e-14, atol=1e-14, max_steps=1),
    )
    kw = dict(algorithm=alg, optimiser=optax.sgd(0.5), num_steps=3, outer_args=C, inner_args=ZEROS)
    sol = js.bilevel.solve(outer, inner, jnp.ones(2), ZEROS, throw=False, **kw)
    assert sol.result == js.RESULTS.adjoint_not_converged
    assert not bool(sol.metrics["adjoint_converged"][0]) and bool(sol.metrics["inner_converged"][0])
    with pytest.raises(Exception, match="adjoint system"):
        js.bilevel.solve(outer, inner, jnp.ones(2), ZEROS, **kw).value.block_until_ready()


def test_vmap_one_bad_member_with_throw_false():
    thetas = jnp.array([[1.0, 1.0], [jnp.nan, 0.5], [0.0, 2.0]])

    def run(theta0):
        return js.bilevel.solve(
            outer,
            inner,
            theta0,
            ZEROS,
            algorithm=js.bilevel.AID(inner_solver=js.GradientDescent(0.4)),
            optimiser=optax.sgd(0.5),
            num_steps=10,
            outer_args=C,
            inner_args=ZEROS,
            throw=False,
        )

    out = jax.vmap(run)(thetas)
    assert (out.result == js.RESULTS.nonfinite).tolist() == [False, True, False]
    for i in (0, 2):
        one = run(thetas[i])
        assert one.result == js.RESULTS.successful and (out.result == one.result)[i]
        np.testing.assert_allclose(out.value[i], one.value, rtol=1e-12)
