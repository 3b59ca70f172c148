"""Bad input fails clearly: trace-time errors that say what was expected, result codes for bad
values, and `max_steps_reached` with the stats filled in."""

import equinox as eqx
import jax.numpy as jnp
import pytest

import jaxsolve as js

quad = lambda y, a: jnp.sum((y - a) ** 2)


def test_objective_must_return_a_scalar():
    with pytest.raises(ValueError, match="must return a floating-point scalar"):
        js.minimise(lambda y, a: (y - a) ** 2, jnp.zeros(3), jnp.ones(3))


def test_integer_initial_point_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        js.minimise(quad, jnp.zeros(3, dtype=jnp.int32), jnp.ones(3))


def test_wrong_solver_kind():
    with pytest.raises(TypeError, match="minimise's `solver`"):
        js.minimise(quad, jnp.zeros(3), jnp.ones(3), solver=js.AndersonFixedPoint())
    with pytest.raises(TypeError, match="fixed_point's `solver`"):
        js.fixed_point(lambda y, _: y, jnp.zeros(3), solver=js.LBFGS())
    with pytest.raises(TypeError, match="adjoint"):
        js.minimise(quad, jnp.zeros(3), jnp.ones(3), adjoint="implicit")


@pytest.mark.parametrize(
    "kwargs", [{"tol": 0.0}, {"tol": -1.0}, {"max_steps": 0}, {"max_steps": 2.5}]
)
def test_bad_tolerances_and_step_counts(kwargs):
    with pytest.raises(ValueError):
        js.minimise(quad, jnp.zeros(3), jnp.ones(3), **kwargs)


def test_map_with_wrong_output_shape():
    with pytest.raises(ValueError, match="same structure and shapes"):
        js.fixed_point(lambda y, _: jnp.concatenate([y, y]), jnp.zeros(3))
    with pytest.raises(ValueError, match="same structure and shapes"):
        js.root_find(lambda y, _: jnp.sum(y), jnp.zeros(3))


def test_bad_solver_parameters():
    with pytest.raises(ValueError):
        js.AndersonFixedPoint(history=0)
    with pytest.raises(ValueError):
        js.Neumann(steps=0)
    with pytest.raises(ValueError):
        js.UnrollAdjoint(kind="lax")
    with pytest.raises(TypeError):
        js.OptaxMinimiser("adam")


def test_nan_input_gives_nonfinite_result_or_error():
    a = jnp.array([1.0, jnp.nan, 0.0])
    sol = js.minimise(quad, jnp.zeros(3), a, throw=False)
    assert sol.result == js.RESULTS.nonfinite
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        js.minimise(quad, jnp.zeros(3), a)
    sol = js.fixed_point(lambda y, a: 0.5 * y + a, jnp.zeros(3), a, throw=False)
    assert sol.result == js.RESULTS.nonfinite


def test_max_steps_reached_with_stats():
    sol = js.minimise(
        quad, jnp.zeros(3), jnp.ones(3), solver=js.GradientDescent(1e-3), max_steps=7, throw=False
    )
    assert sol.result == js.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 7
    # gradient descent with step 1e-3 on |y - 1|^2: error after 7 steps is known exactly
    expected = 2 * jnp.sqrt(3.0) * (1 - 2e-3) ** 7
    assert jnp.allclose(sol.stats["error"], expected)
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        js.minimise(quad, jnp.zeros(3), jnp.ones(3), solver=js.GradientDescent(1e-3), max_steps=7)


def test_diverging_step_is_nonfinite_not_silent():
    sol = js.minimise(
        quad, jnp.zeros(3), jnp.ones(3), solver=js.GradientDescent(5.0), max_steps=2000, throw=False
    )
    assert sol.result == js.RESULTS.nonfinite
