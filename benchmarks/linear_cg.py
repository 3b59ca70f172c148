"""CG on the 2-D Poisson problem (5-point Laplacian, Dirichlet), matrix-free, float64:
jaxsolve vs jax.scipy.sparse.linalg.cg vs lineax CG vs SciPy CSR CG, same problem, same
relative tolerance, in one process. Prints a Markdown table and saves linear_cg.png.

Usage: python benchmarks/linear_cg.py [--small]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N = 64 if SMALL else 256
RTOL = 1e-8
REPEATS = 3 if SMALL else 9
FIXED = 200  # iterations for the per-iteration timing


def laplacian(u):
    p = jnp.pad(u, 1)
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def median_time(fn):
    fn()  # compile
    ts = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    h = 1.0 / (N + 1)
    xs = jnp.arange(1, N + 1) * h
    b = jnp.sin(np.pi * xs)[:, None] * jnp.sin(2 * np.pi * xs)[None, :] + 0.1 * xs[:, None]
    b = b * h**2

    @jax.jit
    def ours(b, tol, steps_cap):
        del steps_cap
        sol = js.linear.solve(laplacian, b, js.linear.CG(tol=tol, max_steps=20_000), throw=False)
        return sol.value, sol.stats["num_steps"]

    @jax.jit
    def ours_fixed(b):
        solver = js.linear.CG(tol=1e-300, max_steps=FIXED)
        sol = js.linear.solve(laplacian, b, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    @jax.jit
    def jsp(b):
        return jax.scipy.sparse.linalg.cg(laplacian, b, tol=RTOL, atol=0.0, maxiter=20_000)[0]

    @jax.jit
    def jsp_fixed(b):
        return jax.scipy.sparse.linalg.cg(laplacian, b, tol=0.0, atol=0.0, maxiter=FIXED)[0]

    op = lx.FunctionLinearOperator(
        laplacian, jax.eval_shape(lambda: b), lx.positive_semidefinite_tag
    )

    @jax.jit
    def lxcg(b):
        # lineax's CG stops on norm(r / (atol + rtol |b|)) <= 1 (elementwise scale); with
        # rtol = 0, atol = RTOL ‖b‖ and the 2-norm this is the same rule ‖r‖ <= RTOL ‖b‖.
        atol = RTOL * jnp.linalg.norm(b)
        solver = lx.CG(
            rtol=0.0, atol=atol, max_steps=20_000, norm=lambda r: jnp.sqrt(jnp.sum(r**2))
        )
        sol = lx.linear_solve(op, b, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    @jax.jit
    def lxcg_fixed(b):
        solver = lx.CG(rtol=0.0, atol=0.0, max_steps=FIXED)
        sol = lx.linear_solve(op, b, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    rel = lambda x: float(jnp.linalg.norm(b - laplacian(x)) / jnp.linalg.norm(b))
    x_ours, it_ours = ours(b, RTOL, 0)
    x_jsp = jsp(b)
    x_lx, it_lx = lxcg(b)
    # jax.scipy's cg reports no count; it runs the same recurrence with the same stopping rule
    # (‖r‖ ≤ tol‖b‖), so it takes our count (checked: its residual at count − 1 is above tol).
    x_jsp_less = jax.scipy.sparse.linalg.cg(
        laplacian, b, tol=0.0, atol=0.0, maxiter=int(it_ours) - 1
    )[0]
    assert rel(x_jsp_less) > RTOL * 0.999, "jax.scipy cg converged earlier than assumed"
    it_jsp = int(it_ours)

    A = sp.diags([4.0], [0], shape=(N * N, N * N)).tolil()
    T = sp.diags([-1.0, -1.0], [-1, 1], shape=(N, N))
    A = (sp.kron(sp.eye(N), sp.diags([4.0], [0], shape=(N, N)) + T) + sp.kron(T, sp.eye(N))).tocsr()
    bn = np.asarray(b).ravel()
    count = [0]

    def scipy_cg():
        count[0] = 0
        return spla.cg(
            A,
            bn,
            rtol=RTOL,
            atol=0.0,
            maxiter=20_000,
            callback=lambda _: count.__setitem__(0, count[0] + 1),
        )[0]

    x_sp = scipy_cg()
    it_sp = count[0]

    t_ours = median_time(lambda: ours(b, RTOL, 0)[0].block_until_ready())
    t_jsp = median_time(lambda: jsp(b).block_until_ready())
    t_lx = median_time(lambda: lxcg(b)[0].block_until_ready())
    t_sp = median_time(scipy_cg)
    f_ours = median_time(lambda: ours_fixed(b)[0].block_until_ready()) / FIXED
    f_jsp = median_time(lambda: jsp_fixed(b).block_until_ready()) / FIXED
    f_lx = median_time(lambda: lxcg_fixed(b)[0].block_until_ready()) / FIXED

    rows = [
        ("jaxsolve CG", int(it_ours), t_ours, t_ours / int(it_ours), f_ours, rel(x_ours)),
        ("jax.scipy cg", it_jsp, t_jsp, t_jsp / it_jsp, f_jsp, rel(x_jsp)),
        ("lineax CG", int(it_lx), t_lx, t_lx / int(it_lx), f_lx, rel(x_lx)),
        (
            "SciPy CSR cg",
            it_sp,
            t_sp,
            t_sp / it_sp,
            float("nan"),
            float(np.linalg.norm(A @ x_sp - bn) / np.linalg.norm(bn)),
        ),
    ]
    print(f"\nCG, 2-D Poisson {N}x{N} (n = {N * N}), matrix-free, float64, rtol {RTOL:g}\n")
    print(
        "| solver | iterations | time to tol (s) | per iteration (ms) | per iteration, "
        f"fixed {FIXED} its (ms) | ratio per it. (ours / peer) | final rel. residual |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, it, t, per, fixed, res in rows:
        ratio = f_ours / fixed if np.isfinite(fixed) else (t_ours / int(it_ours)) / per
        fixed_s = f"{1e3 * fixed:.3f}" if np.isfinite(fixed) else "—"
        print(
            f"| {name} | {it} | {t:.3f} | {1e3 * per:.3f} | {fixed_s} | {ratio:.2f} | {res:.1e} |"
        )

    # Gradient of a loss of the solution w.r.t. a parameter of A (the shift c of L + cI):
    # reverse mode (one adjoint CG solve) vs forward mode (one tangent CG solve).
    def loss(c):
        A = js.linear.Stencil5.poisson((N, N), shift=c)
        return jnp.sum(js.linear.solve(A, b, js.linear.CG(tol=RTOL, max_steps=20_000)).value ** 2)

    rev = jax.jit(jax.grad(loss))
    fwd = jax.jit(lambda c: jax.jvp(loss, (c,), (jnp.ones_like(c),))[1])
    c0 = jnp.array(1e-3)
    assert abs(float(rev(c0)) - float(fwd(c0))) <= 1e-6 * abs(float(fwd(c0)))
    t_val = median_time(lambda: jax.jit(loss)(c0).block_until_ready())
    t_rev = median_time(lambda: rev(c0).block_until_ready())
    t_fwd = median_time(lambda: fwd(c0).block_until_ready())
    print(
        f"\nd/dc sum(x(c)^2), A = L + cI ({N}x{N}), CG rtol {RTOL:g}: value {t_val:.3f} s, "
        f"forward (jvp) {t_fwd:.3f} s, reverse (grad) {t_rev:.3f} s, "
        f"reverse / forward = {t_rev / t_fwd:.2f}"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r[0] for r in rows]
    ax.bar(names, [1e3 * r[3] for r in rows], color=["C0", "C1", "C2", "C3"])
    ax.set_ylabel("time per CG iteration (ms)")
    ax.set_title(f"CG, 2-D Poisson {N}x{N}, matrix-free, float64")
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_cg.png"), dpi=120)


if __name__ == "__main__":
    main()
