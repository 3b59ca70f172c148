"""QPs: js.qp.solve (OSQP-style ADMM with polishing) against JAXopt's BoxOSQP and OSQP, side by
side in one process, float64 on CPU.

- accuracy: objective against SciPy (trust-constr at tight tolerances) and against the closed
  form on an equality-constrained QP, and the KKT error of each solver's answer measured by one
  yardstick (jaxsolve's `QPProblem.kkt_error`, relative ∞-norm residuals);
- time: one QP (n = 30) and a batch of 1000 QPs (n = 20 and n = 50) under `jax.vmap`, each
  solver jitted, at tol = 1e-6 for everyone; medians of interleaved repeats;
- gradients: d(wᵀx*)/dθ for every input θ, by jaxsolve's implicit KKT derivative, against
  central finite differences.

Run: `python benchmarks/qp_osqp.py` (writes benchmarks/RESULTS-qp.md's tables to stdout);
`python benchmarks/qp_osqp.py --batch-only [--sizes 20,50]`: only the time table (one QP and the
1000-QP batches), jaxsolve against BoxOSQP (JAXopt OSQP, 2-5× slower than BoxOSQP, left out),
batch rounds as many as `--rounds` (default 3) allows; `--lu` adds BoxOSQP with direct (LU)
inner solves (its `eq_qp_solve="lu"`; the default is CG), `--lu-only` compares with that alone;
`--box-maxiter K` caps BoxOSQP's iterations at K (default 20000)."""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize as so  # noqa: E402
from _timing import compare_times, machine, markdown_table  # noqa: E402

import jaxsolve as js  # noqa: E402
from jaxsolve.qp import QPProblem  # noqa: E402

TOL = 1e-6


def random_qp(rng, n, p, q):
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.01 * np.eye(n)
    x0 = rng.uniform(-0.5, 0.5, size=n)
    A = rng.normal(size=(p, n))
    G = rng.normal(size=(q, n))
    h = G @ x0 + rng.uniform(0.0, 0.5, size=q)
    c = rng.normal(size=n)
    return Q, c, A, A @ x0, G, h, -np.ones(n), np.ones(n)


def batch_qps(rng, size, n, p, q):
    qps = [random_qp(rng, n, p, q) for _ in range(size)]
    return [jnp.asarray(np.stack(xs)) for xs in zip(*qps)]


# --- the three solvers, all on  min ½xᵀQx + cᵀx, Ax = b, Gx ≤ h, lo ≤ x ≤ up ------------------


def jaxsolve_qp(Q, c, A, b, G, h, lo, up):
    sol = js.qp.solve(Q, c, A=A, b=b, G=G, h=h, lower=lo, upper=up, tol=TOL, throw=False)
    return sol.x


BOX = jaxopt.BoxOSQP(tol=TOL, maxiter=20000, jit=True)
OSQP = jaxopt.OSQP(tol=TOL, maxiter=20000, jit=True)


BOX_LU = jaxopt.BoxOSQP(tol=TOL, maxiter=20000, jit=True, eq_qp_solve="lu")


def boxosqp_qp(Q, c, A, b, G, h, lo, up, box=None):
    box = BOX if box is None else box
    n = c.shape[0]
    C = jnp.concatenate([A, G, jnp.eye(n)])
    lo_all = jnp.concatenate([b, jnp.full(h.shape, -jnp.inf), lo])
    up_all = jnp.concatenate([b, h, up])
    return box.run(params_obj=(Q, c), params_eq=C, params_ineq=(lo_all, up_all)).params.primal[0]


def boxosqp_lu_qp(*data):
    return boxosqp_qp(*data, box=BOX_LU)


def osqp_qp(Q, c, A, b, G, h, lo, up):
    n = c.shape[0]
    G_all = jnp.concatenate([G, jnp.eye(n), -jnp.eye(n)])
    h_all = jnp.concatenate([h, up, -lo])
    return OSQP.run(params_obj=(Q, c), params_eq=(A, b), params_ineq=(G_all, h_all)).params.primal


SOLVERS = {"jaxsolve": jaxsolve_qp, "JAXopt BoxOSQP": boxosqp_qp, "JAXopt OSQP": osqp_qp}


def scipy_reference(Q, c, A, b, G, h, lo, up):
    n = len(c)
    res = so.minimize(
        lambda x: 0.5 * x @ Q @ x + c @ x,
        np.zeros(n),
        jac=lambda x: Q @ x + c,
        hess=lambda x: Q,
        constraints=[so.LinearConstraint(A, b, b), so.LinearConstraint(G, -np.inf, h)],
        bounds=so.Bounds(lo, up),
        method="trust-constr",
        options=dict(gtol=1e-13, xtol=1e-15, maxiter=20000),
    )
    return res.fun


def kkt_error_of_x(data, x):
    """One yardstick for every solver: the best multipliers for x (least squares on the
    stationarity condition over the constraints active at x) and jaxsolve's KKT error."""
    Q, c, A, b, G, h, lo, up = (np.asarray(v) for v in data)
    x = np.asarray(x)
    n = len(c)
    C = np.vstack([A, G, np.eye(n)])
    lo_all = np.concatenate([b, -np.inf * np.ones(len(h)), lo])
    up_all = np.concatenate([b, h, up])
    cx = C @ x
    scale = 1e-6 * (1 + np.abs(cx))
    upper = cx >= up_all - scale
    lower = cx <= lo_all + scale
    act = upper | lower
    y = np.zeros(len(cx))
    if act.any():
        y[act] = np.linalg.lstsq(C[act].T, -(Q @ x + c), rcond=None)[0]
    y = np.where(upper & ~lower, np.maximum(y, 0), np.where(lower & ~upper, np.minimum(y, 0), y))
    p = QPProblem(*(jnp.asarray(v) for v in (Q, c, A, b, G, h, lo, up)))
    return float(p.kkt_error(jnp.asarray(x), jnp.asarray(y)))


def objective(data, x):
    Q, c = np.asarray(data[0]), np.asarray(data[1])
    x = np.asarray(x)
    return 0.5 * x @ Q @ x + c @ x


def accuracy_section(rng):
    rows = []
    for n, p, q in ((10, 2, 5), (30, 5, 15), (50, 5, 25)):
        data = [jnp.asarray(v) for v in random_qp(rng, n, p, q)]
        f_ref = scipy_reference(*(np.asarray(v) for v in data))
        row = [f"n={n}, p={p}, q={q}, box"]
        for fn in SOLVERS.values():
            x = jax.jit(fn)(*data)
            row += [f"{abs(objective(data, x) - f_ref) / (1 + abs(f_ref)):.1e}"]
            row += [f"{kkt_error_of_x(data, x):.1e}"]
        rows.append(row)
    # the closed form of an equality-constrained QP
    n, p = 30, 10
    M = rng.normal(size=(n, n))
    Q, c, A, b = (
        M @ M.T / n + 0.1 * np.eye(n),
        rng.normal(size=n),
        rng.normal(size=(p, n)),
        rng.normal(size=p),
    )
    K = np.block([[Q, A.T], [A, np.zeros((p, p))]])
    x_ref = np.linalg.solve(K, np.concatenate([-c, b]))[:n]
    f_ref = 0.5 * x_ref @ Q @ x_ref + c @ x_ref
    free = np.zeros((1, n)), np.array([1e6]), -np.full(n, 1e6), np.full(n, 1e6)
    data = [jnp.asarray(v) for v in (Q, c, A, b) + free]
    row = [f"equality QP n={n}, p={p} (closed form)"]
    for fn in SOLVERS.values():
        x = jax.jit(fn)(*data)
        row += [
            f"{abs(objective(data, x) - f_ref) / (1 + abs(f_ref)):.1e}",
            f"{np.abs(np.asarray(x) - x_ref).max():.1e} (‖x−x*‖∞)",
        ]
    rows.append(row)
    header = ["problem"] + [f"{k} {m}" for k in SOLVERS for m in ("obj. gap", "KKT err")]
    return markdown_table(header, rows)


def timing_section(rng, solvers=SOLVERS, sizes=(20, 50), rounds=3):
    rows = []
    others = [k for k in solvers if k != "jaxsolve"]

    def ratios(t):
        return [f"{t['jaxsolve'] / t[k]:.2f}×" for k in others]

    # one QP
    data = [jnp.asarray(v) for v in random_qp(rng, 30, 5, 15)]
    fns = {k: jax.jit(f) for k, f in solvers.items()}
    t = compare_times(fns, *data, repeats=15)
    rows.append(["one QP, n=30, p=5, q=15 + box"] + [f"{1e3 * t[k]:.2f} ms" for k in solvers])
    rows[-1] += ratios(t)
    print(rows[-1], file=sys.stderr, flush=True)
    for n, p, q in ((20, 3, 10), (50, 5, 25)):
        data = batch_qps(rng, 1000, n, p, q)  # drawn whether timed or not: the same QPs
        if n not in sizes:
            continue
        fns = {k: jax.jit(jax.vmap(f)) for k, f in solvers.items()}
        # seconds per call: `rounds` interleaved rounds of one call each, order reversed every
        # round; the median round (a slow candidate runs once in `interleaved_times`, so the
        # rounds are driven here)
        compiled = {k: f.lower(*data).compile() for k, f in fns.items()}
        times = {k: [] for k in solvers}
        xs = {}
        for r in range(rounds):
            for k in list(solvers) if r % 2 == 0 else list(solvers)[::-1]:
                start = time.perf_counter()
                xs[k] = np.asarray(jax.block_until_ready(compiled[k](*data)))
                times[k].append(time.perf_counter() - start)
                print(n, k, f"{times[k][-1]:.2f} s", file=sys.stderr, flush=True)
        t = {k: float(np.median(v)) for k, v in times.items()}
        rows.append(
            [f"1000 QPs (vmap), n={n}, p={p}, q={q} + box (median of {rounds} interleaved rounds)"]
            + [f"{t[k]:.2f} s" for k in solvers]
            + ratios(t)
        )
        print(rows[-1], file=sys.stderr, flush=True)
        # accuracy of the batch with one yardstick: KKT errors of 20 sampled members
        errs = {
            k: max(kkt_error_of_x([d[i] for d in data], xs[k][i]) for i in range(0, 1000, 50))
            for k in solvers
        }
        rows.append(
            ["  worst KKT error (20 sampled members)"]
            + [f"{errs[k]:.1e}" for k in solvers]
            + [""] * len(others)
        )
    header = ["case"] + list(solvers) + [f"jaxsolve / {k}" for k in others]
    return markdown_table(header, rows)


def gradient_section(rng):
    data = [jnp.asarray(v) for v in random_qp(rng, 10, 2, 5)]
    w = jnp.asarray(rng.normal(size=10))
    names = ["Q", "c", "A", "b", "G", "h", "lower", "upper"]

    def loss(*d):
        return jnp.dot(
            w, js.qp.solve(d[0], d[1], A=d[2], b=d[3], G=d[4], h=d[5], lower=d[6], upper=d[7]).x
        )

    loss_j = jax.jit(loss)
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(8))))(*data)
    rows = []
    for k in range(8):
        d = jnp.asarray(rng.normal(size=data[k].shape))
        eps = 1e-6
        plus = [v + eps * d if j == k else v for j, v in enumerate(data)]
        minus = [v - eps * d if j == k else v for j, v in enumerate(data)]
        fd = float((loss_j(*plus) - loss_j(*minus)) / (2 * eps))
        an = float(jnp.vdot(grads[k], d))
        rows.append([names[k], f"{an:.8f}", f"{fd:.8f}", f"{abs(an - fd) / (1 + abs(fd)):.1e}"])
    # time of value+gradient vs value alone
    vg = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8))))
    t = compare_times({"value": loss_j, "value+grad": vg}, *data, repeats=15)
    note = (
        f"value {1e3 * t['value']:.2f} ms, value and gradient w.r.t. all 8 inputs "
        f"{1e3 * t['value+grad']:.2f} ms"
    )
    return markdown_table(
        ["input θ", "implicit dθ·∇", "finite difference", "relative gap"], rows
    ), note


def _arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    if "--batch-only" in sys.argv:
        sizes = tuple(int(s) for s in _arg("--sizes", "20,50").split(","))
        if "--box-maxiter" in sys.argv:  # cap BoxOSQP's iterations (its stragglers: see RESULTS)
            BOX = jaxopt.BoxOSQP(tol=TOL, maxiter=int(_arg("--box-maxiter", "20000")), jit=True)
        # `--lu`: BoxOSQP with its direct (LU) inner solves too, or instead (`--lu-only`)
        names = ["jaxsolve"] + ([] if "--lu-only" in sys.argv else ["JAXopt BoxOSQP"])
        solvers = {k: SOLVERS[k] for k in names}
        if "--lu" in sys.argv or "--lu-only" in sys.argv:
            solvers["JAXopt BoxOSQP (LU)"] = boxosqp_lu_qp
        # draw what the accuracy section draws, so the timed QPs are the full run's
        for n, p, q in ((10, 2, 5), (30, 5, 15), (50, 5, 25)):
            random_qp(rng, n, p, q)
        rng.normal(size=(30, 30)), rng.normal(size=30), rng.normal(size=(10, 30))
        rng.normal(size=10)
        print(f"Machine: {machine()}; jaxopt 0.8.5; float64; tol = {TOL} for all solvers.\n")
        print(timing_section(rng, solvers, sizes, int(_arg("--rounds", "3"))), flush=True)
        sys.exit()
    print(f"Machine: {machine()}; jaxopt 0.8.5; float64; tol = {TOL} for all solvers.\n")
    t0 = time.time()
    print(
        "### Accuracy (objective vs SciPy trust-constr / closed form; KKT error, one yardstick)\n"
    )
    print(accuracy_section(rng), "\n", flush=True)
    print("### Time (median of interleaved repeats, compilation excluded)\n")
    print(timing_section(rng), "\n", flush=True)
    print("### Gradients (implicit KKT derivative vs central finite differences, n=10)\n")
    table, note = gradient_section(rng)
    print(table, "\n\n" + note, flush=True)
    print(f"\n(total {time.time() - t0:.0f} s)", file=sys.stderr)
