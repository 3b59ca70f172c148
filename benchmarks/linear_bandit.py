"""Learning to Relax: SOR's ω chosen per system by jaxsolve's RelaxationBandit over a sequence
of related systems (2-D Poisson + cI with random c, 64×64 grid), against every fixed ω in
hindsight and ω = 1 (Gauss-Seidel). Counts SOR iterations (not times). The bandit runs live:
`lax.scan` over the sequence, each step `choose` → `solve` → `update`; the cost of every ω on
every system is tabulated once (SOR solves batched over systems with vmap; ~8 minutes at 64×64
on a loaded 2-core CPU, cached in /tmp) so that more seeds replay exactly what a live run sees.
The arms: 10 values of ω with 2 − ω log-spaced in [0.05, 1] (denser near 2, where the optimal
ω of Poisson problems lies and where the cost is most sensitive to ω).

Usage: python benchmarks/linear_bandit.py [--small]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N = 16 if SMALL else 64
T = 40 if SMALL else 100
TOL = 1e-6
MAX_STEPS = 20000
C_MIN, C_MAX = 0.0, 0.2
OMEGAS = 2 - jnp.geomspace(1.0, 0.05, 10)


def problem(c, key):
    A = js.linear.Stencil5.poisson((N, N), shift=c)
    b = jax.random.normal(key, (N, N))
    return A, b


def sor_steps(c, key, omega):
    A, b = problem(c, key)
    solver = js.linear.SOR(omega, tol=TOL, max_steps=MAX_STEPS)
    return js.linear.solve(A, b, solver, throw=False).stats["num_steps"]


sor_steps_batch = jax.jit(jax.vmap(sor_steps, in_axes=(0, 0, None)))


def cost_table(cs, keys):
    """Every ω on every system; systems batched in chunks of similar c (similar counts)."""
    order = np.argsort(np.asarray(cs))
    table = np.zeros((T, len(OMEGAS)), int)
    for a, w in enumerate(OMEGAS):
        for ch in np.array_split(order, 5):
            table[ch, a] = np.asarray(sor_steps_batch(cs[ch], keys[ch], w))
    return table


def run_bandit(bandit, cs, keys, seed, contextual):
    def body(state, inp):
        c, key = inp
        feature = c if contextual else None
        arm, omega, state = bandit.choose(state, feature)
        n = sor_steps(c, key, omega)
        return bandit.update(state, arm, n, feature), (n, omega)

    state0 = bandit.init(jax.random.PRNGKey(seed))
    return jax.jit(lambda cs, keys: jax.lax.scan(body, state0, (cs, keys)))(cs, keys)


def simulate(bandit, table, cs, seed, contextual):
    """The same bandit fed from the cost table (solves are deterministic, so this is exactly
    what the live run sees); used for the extra seeds."""
    table = jnp.asarray(table)

    def body(state, inp):
        c, costs = inp
        feature = c if contextual else None
        arm, omega, state = bandit.choose(state, feature)
        n = costs[arm]
        return bandit.update(state, arm, n, feature), (n, omega)

    state0 = bandit.init(jax.random.PRNGKey(seed))
    return jax.lax.scan(body, state0, (cs, table))


def main():
    t0 = time.perf_counter()
    rng = jax.random.PRNGKey(0)
    kc, kb = jax.random.split(rng)
    cs = C_MIN + (C_MAX - C_MIN) * jax.random.uniform(kc, (T,)) ** 2  # more small shifts
    keys = jax.random.split(kb, T)
    # Cost table in hindsight: every ω on every system.
    cache = pathlib.Path(f"/tmp/linear_bandit_table_geom{len(OMEGAS)}_{N}_{T}.npy")
    if cache.exists():
        table = np.load(cache)
    else:
        table = cost_table(cs, keys)
        np.save(cache, table)
    t_table = time.perf_counter() - t0
    fixed_totals = table.sum(0)
    best = int(fixed_totals.argmin())
    gs_total = int(fixed_totals[0])
    oracle_total = int(table.min(1).sum())

    bandit = js.linear.RelaxationBandit(OMEGAS, loss_scale=500, learning_rate=8.0)
    ctx = js.linear.RelaxationBandit(
        OMEGAS,
        loss_scale=500,
        learning_rate=16.0,
        num_contexts=4,
        feature_min=C_MIN,
        feature_max=C_MAX,
    )
    seeds = range(100, 120)  # not the seeds 0-19 used to pick learning_rate / loss_scale
    runs = [simulate(bandit, table, cs, s, False)[1] for s in seeds]
    cruns = [simulate(ctx, table, cs, s, True)[1] for s in seeds]
    # Seed 0 live: lax.scan over choose -> js.linear.solve -> update; it must match the table.
    live = run_bandit(bandit, cs, keys, seeds[0], False)[1]
    live_c = run_bandit(ctx, cs, keys, seeds[0], True)[1]
    assert np.array_equal(np.asarray(live[0]), np.asarray(runs[0][0]))
    assert np.array_equal(np.asarray(live_c[0]), np.asarray(cruns[0][0]))
    b_totals = [int(r[0].sum()) for r in runs]
    c_totals = [int(r[0].sum()) for r in cruns]
    b_mean, c_mean = float(np.mean(b_totals)), float(np.mean(c_totals))

    print(
        f"\nSOR on {T} systems 2-D Poisson {N}x{N} + cI, c in [{C_MIN}, {C_MAX}], "
        f"rel. tol {TOL:g}, max_steps {MAX_STEPS}, float64; {len(OMEGAS)} ω in [1, 1.95] "
        "(2 − ω log-spaced)\n"
    )
    print("| policy | total SOR iterations | vs best fixed ω | ω = 1 / policy |")
    print("|---|---|---|---|")
    rows = [
        ("ω = 1 (Gauss-Seidel)", gs_total),
        (f"best fixed ω in hindsight (ω = {float(OMEGAS[best]):.2f})", int(fixed_totals[best])),
        (
            f"bandit (Tsallis-INF), mean of {len(b_totals)} seeds "
            f"(min {min(b_totals)}, max {max(b_totals)})",
            b_mean,
        ),
        (
            f"contextual bandit (feature c, 4 bins), mean of {len(c_totals)} seeds "
            f"(min {min(c_totals)}, max {max(c_totals)})",
            c_mean,
        ),
        ("instance-optimal ω (oracle)", oracle_total),
    ]
    for name, tot in rows:
        print(f"| {name} | {tot:.0f} | {tot / fixed_totals[best]:.2f} | {gs_total / tot:.2f} |")
    print(f"\n(cost table {t_table:.0f} s; total script time {time.perf_counter() - t0:.0f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    ax.plot(np.arange(T), np.cumsum(table[:, 0]), label="ω = 1")
    ax.plot(np.arange(T), np.cumsum(table[:, best]), label=f"best fixed ω = {OMEGAS[best]:.2f}")
    ax.plot(np.arange(T), np.cumsum(np.asarray(runs[0][0])), label="bandit")
    ax.plot(np.arange(T), np.cumsum(np.asarray(cruns[0][0])), label="contextual bandit")
    ax.plot(np.arange(T), np.cumsum(table.min(1)), "k--", label="instance-optimal")
    ax.set_xlabel("system")
    ax.set_ylabel("cumulative SOR iterations")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.scatter(np.asarray(cs), np.asarray(runs[0][1]), s=10, label="bandit ω")
    ax.scatter(np.asarray(cs), np.asarray(cruns[0][1]), s=10, label="contextual ω")
    ax.plot(np.asarray(cs), np.asarray(OMEGAS)[table.argmin(1)], "k.", label="best ω per system")
    ax.set_xlabel("shift c")
    ax.set_ylabel("ω")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_bandit.png"), dpi=120)


if __name__ == "__main__":
    main()
