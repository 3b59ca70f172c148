"""Learned solvers (DCDM, Kaneda et al. ICML 2023): a small convolutional U-Net trained without
solutions (`js.linear.dcdm_loss`) on 32×32 Poisson grids, used as the search direction of
`js.linear.FlexibleCG`, and evaluated on held-out right-hand sides on grids 2–8× larger
(64×64 to 256×256), against CG and Jacobi-PCG. Then a Darcy problem `−∇·(a∇u) = b` with a
random log-normal coefficient, where Jacobi helps: the Poisson-trained network is reused
through symmetric diagonal scaling, `d = D^{-1/2} net(D^{-1/2} r)`, with no retraining.

Counts iterations to relative residual 1e-6 (medians over held-out right-hand sides), and
times whole solves (median of repeats after compilation). float64.

Usage: python benchmarks/linear_learned.py [--small]
"""

import pathlib
import sys
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
TRAIN_N = 16 if SMALL else 32
TEST_NS = [16, 32, 64] if SMALL else [32, 64, 128, 256]
STEPS = 150 if SMALL else 600
NUM_RHS = 3 if SMALL else 8
TOL = 1e-6
MAX_STEPS = 20_000
HERE = pathlib.Path(__file__).parent


def train():
    A = js.linear.Stencil5.poisson((TRAIN_N, TRAIN_N))

    def sample(key):
        k1, k2 = jax.random.split(key)
        decay = jax.random.uniform(k2, (16,), minval=0.0, maxval=1.5)
        keys = jax.random.split(k1, 16)
        rhs = jax.vmap(lambda k, d: js.linear.low_frequency_rhs(k, A.in_structure().shape, d))
        return A, rhs(keys, decay)

    net = js.linear.GridUNet(jax.random.PRNGKey(0), width=8, levels=3)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, STEPS))
    t = time.perf_counter()
    net, losses = js.linear.train_dcdm(net, sample, opt, STEPS, jax.random.PRNGKey(1))
    jax.block_until_ready(losses)
    return net, losses, time.perf_counter() - t


class Scaled(eqx.Module):
    """d = D^{-1/2} net(D^{-1/2} r): a Poisson-trained direction for a variable-coefficient A."""

    net: js.linear.GridUNet
    inv_sqrt_d: jax.Array

    def __call__(self, r):
        return self.inv_sqrt_d * self.net(self.inv_sqrt_d * r)


@eqx.filter_jit
def run(A, b, solver):
    sol = js.linear.solve(A, b, solver, throw=False)
    return sol.value, sol.stats["num_steps"], sol.result


def timed(A, b, solver, repeats=3):
    out = run(A, b, solver)
    jax.block_until_ready(out)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(A, b, solver))
        ts.append(time.perf_counter() - t)
    return out, float(np.median(ts))


def table_rows(problems, solvers):
    rows, curves = [], {name: [] for name in solvers}
    for label, A, rhs in problems:
        its = {name: [] for name in solvers}
        secs = {}
        for name, make in solvers.items():
            solver = make(A)
            for i, b in enumerate(rhs):
                if i == 0:
                    (x, n, res), secs[name] = timed(A, b, solver)
                else:
                    x, n, res = run(A, b, solver)
                assert res == js.RESULTS.successful, (label, name, res)
                r = b - A.mv(x)
                assert float(jnp.linalg.norm(r) / jnp.linalg.norm(b)) < 2 * TOL, (label, name)
                its[name].append(int(n))
        med = {k: float(np.median(v)) for k, v in its.items()}
        for k in solvers:
            curves[k].append(med[k])
        cells = [f"{med[k]:.0f} ({secs[k] * 1e3:.0f} ms)" for k in solvers]
        ratio = med["CG"] / med["DCDM (FlexibleCG + net)"]
        row = f"| {label} | " + " | ".join(cells) + f" | {ratio:.1f}× |"
        rows.append(row)
    return rows, curves


def main():
    print(f"devices: {jax.devices()}  dtype: float64")
    net, losses, t_train = train()
    print(
        f"trained on {TRAIN_N}×{TRAIN_N} Poisson: {STEPS} Adam steps (batches of 16 rhs), "
        f"{t_train:.1f} s incl. compile; DCDM loss {float(losses[:10].mean()):.3f} → "
        f"{float(losses[-50:].mean()):.4f}"
    )
    jacobi = js.linear.JacobiPreconditioner()
    solvers = {
        "CG": lambda A: js.linear.CG(tol=TOL, max_steps=MAX_STEPS),
        "Jacobi-PCG": lambda A: js.linear.CG(tol=TOL, max_steps=MAX_STEPS, preconditioner=jacobi),
        "DCDM (FlexibleCG + net)": lambda A: js.linear.FlexibleCG(
            net, tol=TOL, max_steps=MAX_STEPS
        ),
    }

    poisson = []
    for n in TEST_NS:
        keys = jax.random.split(jax.random.PRNGKey(1000 + n), NUM_RHS)
        rhs = [jax.random.normal(k, (n, n), jnp.float64) for k in keys]
        poisson.append(
            (f"{n}×{n} ({n // TRAIN_N}× train side)", js.linear.Stencil5.poisson((n, n)), rhs)
        )
    rows_p, curves_p = table_rows(poisson, solvers)

    darcy_solvers = dict(solvers)
    darcy_solvers["DCDM (FlexibleCG + net)"] = lambda A: js.linear.FlexibleCG(
        Scaled(net, 1 / jnp.sqrt(A.center)), tol=TOL, max_steps=MAX_STEPS
    )
    darcy = []
    for n in TEST_NS:
        field = js.linear.low_frequency_rhs(jax.random.PRNGKey(7 + n), (n, n), 1.0, jnp.float64)
        a = jnp.exp(2.0 * field / jnp.std(field))  # log-normal, contrast e^{±4σ}
        keys = jax.random.split(jax.random.PRNGKey(2000 + n), NUM_RHS)
        rhs = [jax.random.normal(k, (n, n), jnp.float64) for k in keys]
        A = js.linear.Stencil5.darcy(a)
        darcy.append((f"{n}×{n}, a max/min {float(a.max() / a.min()):.0f}", A, rhs))
    rows_d, curves_d = table_rows(darcy, darcy_solvers)

    head = "| grid | " + " | ".join(solvers) + " | CG / DCDM iterations |"
    sep = "|---" * (len(solvers) + 2) + "|"
    print("\n### Poisson (held-out white-noise right-hand sides)\n")
    print(head)
    print(sep)
    print("\n".join(rows_p))
    print("\n### Darcy, log-normal coefficient (same network, diagonally scaled)\n")
    print(head)
    print(sep)
    print("\n".join(rows_d))
    print("\ncells: median iterations to relative residual 1e-6 (median wall time of one solve)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, curves, title in [
        (axes[0], curves_p, "2-D Poisson"),
        (axes[1], curves_d, "Darcy, log-normal a"),
    ]:
        for (name, ys), marker in zip(curves.items(), "osD"):
            ax.plot(TEST_NS, ys, marker=marker, label=name)
        ax.axvline(TRAIN_N, color="gray", ls=":", label="training grid")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("grid side N (N×N)")
        ax.set_ylabel("iterations to 1e-6")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"DCDM net trained on {TRAIN_N}×{TRAIN_N} Poisson only, float64")
    fig.tight_layout()
    fig.savefig(HERE / ("linear_learned_small.png" if SMALL else "linear_learned.png"), dpi=120)


if __name__ == "__main__":
    main()
