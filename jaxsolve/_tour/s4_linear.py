"""Linear systems: differentiable Krylov and relaxation solvers, and ω learned over a sequence

One entry point, `js.linear.solve(A, b, solver)`, for dense matrices, lineax operators and
matvec callables. Derivatives with respect to `b` and anything inside `A` come from one adjoint
solve with the same solver. Over a sequence of related systems, `RelaxationBandit` learns SOR's
relaxation ω from iteration counts alone, and `RecycledCG` carries Ritz vectors from solve to
solve. In float32, to relative residuals of 1e-5 (the family's float32 default).
"""


def run():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.sparse.linalg as spla

    import jaxsolve as js

    from . import table

    n, tol = 24, 1e-5
    A = js.linear.Stencil5.poisson((n, n), shift=0.01)
    b_np = np.sin(np.arange(n * n).reshape(n, n) * 0.1)
    b = jnp.asarray(b_np, jnp.float32)
    A64 = np.asarray(A.as_matrix(), np.float64)  # the reference, in float64 by NumPy
    x_ref = np.linalg.solve(A64, b_np.ravel())
    rows = []
    solvers = {
        "CG": js.linear.CG(tol=tol),
        "CG + SSOR(1.5) preconditioner": js.linear.CG(
            tol=tol, preconditioner=js.linear.SSORPreconditioner(1.5)
        ),
        "GMRES(20)": js.linear.GMRES(tol=tol),
        "BiCGStab": js.linear.BiCGStab(tol=tol),
        "SOR(1.0) = Gauss-Seidel": js.linear.SOR(omega=1.0, tol=tol),
        "SOR(1.8)": js.linear.SOR(omega=1.8, tol=tol),
        "SSOR(1.8)": js.linear.SSOR(omega=1.8, tol=tol),
    }
    for name, solver in solvers.items():
        sol = js.linear.solve(A, b, solver)
        err = float(np.linalg.norm(np.asarray(sol.value).ravel() - x_ref) / np.linalg.norm(x_ref))
        rows.append([name, int(sol.stats["num_steps"]), int(sol.stats["num_matvecs"]), err])
    count = [0]
    spla.cg(
        A64,
        b_np.ravel(),
        rtol=tol,
        atol=0.0,
        callback=lambda _: count.__setitem__(0, count[0] + 1),
    )
    rows.append(["SciPy cg (reference)", count[0], "", ""])
    print(f"2-D Poisson {n}x{n} + 0.01 I, float32, relative tolerance {tol:g}:")
    table(rows, ["solver", "iterations", "matvecs", "|x - x_ref| / |x_ref|"])

    # Gradient of a loss of the solution w.r.t. the shift c of A = L + cI (matrix-free),
    # against the closed form d/dc ‖A⁻¹b‖² = −2 xᵀA⁻¹x (float64, NumPy).
    def loss(c):
        return jnp.sum(js.linear.solve(js.linear.Stencil5.poisson((n, n), c), b).value ** 2)

    g = float(jax.jit(jax.grad(loss))(jnp.float32(0.01)))
    exact = -2 * x_ref @ np.linalg.solve(A64, x_ref)
    print(
        f"\nd loss / d c: reverse mode (float32) {g:.6e}, closed form (float64) {exact:.6e}, "
        f"rel. error {abs(g - exact) / abs(exact):.1e}"
    )

    # Learning to Relax on a short sequence of systems L + cI with random c.
    m, T = 12, 40
    omegas = jnp.asarray(2 - np.geomspace(1.0, 0.05, 10), jnp.float32)
    bandit = js.linear.RelaxationBandit(omegas, loss_scale=400, learning_rate=8.0)
    cs_np = 0.05 * np.random.default_rng(0).uniform(size=T) ** 2
    cs = jnp.asarray(cs_np, jnp.float32)
    rhs = jnp.ones((m, m))

    def steps(c, omega):
        A = js.linear.Stencil5.poisson((m, m), shift=c)
        solver = js.linear.SOR(omega=omega, tol=tol, max_steps=2000)
        return js.linear.solve(A, rhs, solver, throw=False).stats["num_steps"]

    @jax.jit
    def sequence(cs):
        def body(state, c):
            arm, omega, state = bandit.choose(state)
            k = steps(c, omega)
            return bandit.update(state, arm, k), k

        return jax.lax.scan(body, bandit.init(jax.random.PRNGKey(1)), cs)

    state, ours = sequence(cs)
    all_fixed = np.asarray(jax.jit(jax.vmap(jax.vmap(steps, (None, 0)), (0, None)))(cs, omegas))
    all_fixed, ours = all_fixed.sum(0), np.asarray(ours)
    best = int(np.argmin(all_fixed))
    print(f"\nSOR over {T} systems ({m}x{m} Poisson + cI), total iterations:")
    table(
        [
            ["omega = 1 (Gauss-Seidel)", int(all_fixed[0])],
            [f"best fixed omega in hindsight ({float(omegas[best]):.2f})", int(all_fixed[best])],
            ["RelaxationBandit (from iteration counts only)", int(ours.sum())],
        ],
        ["policy", "SOR iterations"],
    )
    favourite = jax.jit(lambda state: bandit.greedy(state))(state)
    print(f"bandit's favourite omega now: {float(favourite):.2f}")

    # Krylov recycling: RecycledCG over a sequence with a fixed source, warm-started.
    rcg = js.linear.RecycledCG(tol=tol, recycle=8, refresh=4, harvest=24)
    cg = js.linear.CG(tol=tol)

    @jax.jit
    def recycled(cs):
        def body(carry, c):
            space, x = carry
            A = js.linear.Stencil5.poisson((m, m), shift=c)
            sol, space = rcg.solve(A, rhs, space, x0=x)
            plain = js.linear.solve(A, rhs, cg)
            return (space, sol.value), (sol.stats["num_matvecs"], plain.stats["num_matvecs"])

        return jax.lax.scan(body, (rcg.init(rhs), jnp.zeros_like(rhs)), cs)[1]

    ours, plain = (np.asarray(v) for v in recycled(jnp.asarray(np.sort(cs_np), jnp.float32)))
    print(f"\nCG over the same {T} systems (b = 1), total matrix-vector products:")
    table(
        [
            ["CG from scratch", int(plain.sum())],
            ["RecycledCG (k = 8, from the previous solution)", int(ours.sum())],
        ],
        ["method", "matvecs"],
    )
