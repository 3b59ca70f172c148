"""Linear systems: differentiable Krylov and relaxation solvers, and ω learned over a sequence

One entry point, `js.linear.solve(A, b, solver)`, for dense matrices, lineax operators and
matvec callables. Derivatives with respect to `b` and anything inside `A` come from one adjoint
solve with the same solver. Over a sequence of related systems, `RelaxationBandit` learns SOR's
relaxation ω from iteration counts alone, and `RecycledCG` carries Ritz vectors from solve to
solve.
"""


def run():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.sparse.linalg as spla

    import jaxsolve as js

    from . import table

    n = 24
    A = js.linear.Stencil5.poisson((n, n), shift=0.01)
    b = jnp.sin(jnp.arange(n * n).reshape(n, n) * 0.1)
    x_ref = np.linalg.solve(np.asarray(A.as_matrix()), np.asarray(b).ravel())
    rows = []
    solvers = {
        "CG": js.linear.CG(tol=1e-8),
        "CG + SSOR(1.5) preconditioner": js.linear.CG(
            tol=1e-8, preconditioner=js.linear.SSORPreconditioner(1.5)
        ),
        "GMRES(20)": js.linear.GMRES(tol=1e-8),
        "BiCGStab": js.linear.BiCGStab(tol=1e-8),
        "SOR(1.0) = Gauss-Seidel": js.linear.SOR(omega=1.0, tol=1e-8),
        "SOR(1.8)": js.linear.SOR(omega=1.8, tol=1e-8),
        "SSOR(1.8)": js.linear.SSOR(omega=1.8, tol=1e-8),
    }
    for name, solver in solvers.items():
        sol = js.linear.solve(A, b, solver)
        err = float(np.abs(np.asarray(sol.value).ravel() - x_ref).max())
        rows.append([name, int(sol.stats["num_steps"]), int(sol.stats["num_matvecs"]), err])
    count = [0]
    spla.cg(
        np.asarray(A.as_matrix()),
        np.asarray(b).ravel(),
        rtol=1e-8,
        atol=0.0,
        callback=lambda _: count.__setitem__(0, count[0] + 1),
    )
    rows.append(["SciPy cg (reference)", count[0], "", ""])
    print(f"2-D Poisson {n}x{n} + 0.01 I, relative tolerance 1e-8:")
    table(rows, ["solver", "iterations", "matvecs", "max |x - x_ref|"])

    # Gradient of a loss of the solution w.r.t. the shift c of A = L + cI (matrix-free).
    def loss(c):
        return jnp.sum(js.linear.solve(js.linear.Stencil5.poisson((n, n), c), b).value ** 2)

    c = 0.01
    g = float(jax.grad(loss)(c))
    fd = (float(loss(c + 1e-6)) - float(loss(c - 1e-6))) / 2e-6
    print(f"\nd loss / d c: reverse mode {g:.6e}, finite differences {fd:.6e}")

    # Learning to Relax on a short sequence of systems L + cI with random c.
    m, T = 12, 40
    omegas = 2 - jnp.geomspace(1.0, 0.05, 10)
    bandit = js.linear.RelaxationBandit(omegas, loss_scale=400, learning_rate=8.0)
    cs = 0.05 * jax.random.uniform(jax.random.PRNGKey(0), (T,)) ** 2
    rhs = jnp.ones((m, m))

    def steps(c, omega):
        A = js.linear.Stencil5.poisson((m, m), shift=c)
        solver = js.linear.SOR(omega=omega, tol=1e-6, max_steps=2000)
        return js.linear.solve(A, rhs, solver, throw=False).stats["num_steps"]

    @jax.jit
    def sequence(cs):
        def body(state, c):
            arm, omega, state = bandit.choose(state)
            k = steps(c, omega)
            return bandit.update(state, arm, k), k

        return jax.lax.scan(body, bandit.init(jax.random.PRNGKey(1)), cs)

    state, ours = sequence(cs)
    all_fixed = jax.jit(jax.vmap(jax.vmap(steps, (None, 0)), (0, None)))(cs, omegas).sum(0)
    best = int(jnp.argmin(all_fixed))
    print(f"\nSOR over {T} systems ({m}x{m} Poisson + cI), total iterations:")
    table(
        [
            ["omega = 1 (Gauss-Seidel)", int(all_fixed[0])],
            [f"best fixed omega in hindsight ({float(omegas[best]):.2f})", int(all_fixed[best])],
            ["RelaxationBandit (from iteration counts only)", int(ours.sum())],
        ],
        ["policy", "SOR iterations"],
    )
    print(f"bandit's favourite omega now: {float(bandit.greedy(state)):.2f}")

    # Krylov recycling: RecycledCG over a sequence with a fixed source, warm-started.
    rcg = js.linear.RecycledCG(tol=1e-6, recycle=8, refresh=4, harvest=24)
    cg = js.linear.CG(tol=1e-6)

    @jax.jit
    def recycled(cs):
        def body(carry, c):
            space, x = carry
            A = js.linear.Stencil5.poisson((m, m), shift=c)
            sol, space = rcg.solve(A, rhs, space, x0=x)
            plain = js.linear.solve(A, rhs, cg)
            return (space, sol.value), (sol.stats["num_matvecs"], plain.stats["num_matvecs"])

        return jax.lax.scan(body, (rcg.init(rhs), jnp.zeros_like(rhs)), cs)[1]

    ours, plain = recycled(jnp.sort(cs))
    print(f"\nCG over the same {T} systems (b = 1), total matrix-vector products:")
    table(
        [
            ["CG from scratch", int(plain.sum())],
            ["RecycledCG (k = 8, from the previous solution)", int(ours.sum())],
        ],
        ["method", "matvecs"],
    )
