"""Learning to Relax: SOR's ω chosen per system by jaxsolve's RelaxationBandit over a sequence
of related systems (2-D Poisson + cI with random c, 64×64 grid), against every fixed ω in
hindsight and ω = 1 (Gauss-Seidel). Counts SOR iterations (not times). The bandit runs live:
`lax.scan` over the sequence, each step `choose` → `solve` → `update`; the cost of every ω on
every system is tabulated once (SOR solves batched over systems with vmap; ~8 minutes at 64×64
on a loaded 2-core CPU, cached in /tmp) so that more seeds replay exactly what a live run sees.
The arms: 10 values of ω with 2 − ω log-spaced in [0.05, 1] (denser near 2, where the optimal
ω of Poisson problems lies and where the cost is most sensitive to ω).

Policies: Tsallis-INF (the paper's) and `policy="unimodal"` (OSUB on the ordered grid), each
plain and contextual (feature c). Their settings were chosen on seeds 0-19 of sequence 0; the
tables are for seeds 100-119, with the systems in the drawn order (the seed only moves the
bandit's randomness; the unimodal policy is deterministic, so all its seeds agree) and shuffled
by the seed (every order of i.i.d. systems is an equally likely sequence), and for a second,
fresh sequence (problem key 1; its cost table is built and cached too) with nothing re-chosen.

Usage: python benchmarks/linear_bandit.py [--small]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
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


@eqx.filter_jit
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
    return jax.lax.scan(body, state0, (cs, table))[1]


def sequence(seq):
    """The systems of sequence `seq` (0: the sequence the hyperparameters were chosen on)."""
    kc, kb = jax.random.split(jax.random.PRNGKey(seq))
    cs = C_MIN + (C_MAX - C_MIN) * jax.random.uniform(kc, (T,)) ** 2  # more small shifts
    return cs, jax.random.split(kb, T)


def get_table(seq):
    """Cost table in hindsight (every ω on every system) of sequence `seq`, cached in /tmp."""
    cs, keys = sequence(seq)
    suffix = "" if seq == 0 else f"_seq{seq}"
    cache = pathlib.Path(f"/tmp/linear_bandit_table_geom{len(OMEGAS)}_{N}_{T}{suffix}.npy")
    if cache.exists():
        return np.load(cache)
    table = cost_table(cs, keys)
    np.save(cache, table)
    return table


def order(seed, shuffled):
    """Systems in the drawn order, or shuffled by the seed (the systems are i.i.d., so every
    order is an equally likely sequence; a deterministic policy then still sees new sequences)."""
    perm = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), 1), T)
    return perm if shuffled else jnp.arange(T)


def policies():
    ctx = dict(num_contexts=4, feature_min=C_MIN, feature_max=C_MAX)
    return {
        "bandit (Tsallis-INF)": (RB(OMEGAS, loss_scale=500, learning_rate=8.0), False),
        'bandit (`policy="unimodal"`)': (RB(OMEGAS, loss_scale=1000, policy="unimodal"), False),
        "contextual bandit (Tsallis-INF, feature c, 4 bins)": (
            RB(OMEGAS, loss_scale=500, learning_rate=16.0, **ctx),
            True,
        ),
        'contextual bandit (`"unimodal"`, feature c, 4 bins)': (
            RB(OMEGAS, loss_scale=1000, policy="unimodal", **ctx),
            True,
        ),
    }


RB = js.linear.RelaxationBandit
SEEDS = range(100, 120)  # not the seeds 0-19 used to pick learning_rate / loss_scale


def markdown(table, cs):
    """Print the Markdown table of one sequence; return the replays (for the plot and the
    live check)."""
    fixed_totals = table.sum(0)
    best_total = fixed_totals.min()
    best = int(fixed_totals.argmin())
    gs_total = int(fixed_totals[0])
    print(
        "| policy | total SOR iterations, drawn order | shuffled order per seed "
        "| vs best fixed ω (drawn / shuffled) | ω = 1 / policy (drawn / shuffled) |"
    )
    print("|---|---|---|---|---|")

    def row(name, a, b=None):
        if b is None:
            print(f"| {name} | {a} | same | {a / best_total:.2f} | {gs_total / a:.2f} |")
            return
        sa, sb = (f"{x[0]:.0f} (min {x[1]}, max {x[2]})" for x in (a, b))
        vs_best = f"{a[0] / best_total:.2f} / {b[0] / best_total:.2f}"
        vs_gs = f"{gs_total / a[0]:.2f} / {gs_total / b[0]:.2f}"
        print(f"| {name} | {sa} | {sb} | {vs_best} | {vs_gs} |")

    row("ω = 1 (Gauss-Seidel)", gs_total)
    row(f"best fixed ω in hindsight (ω = {float(OMEGAS[best]):.2f})", int(fixed_totals[best]))
    runs = {}
    for name, (bandit, contextual) in policies().items():
        stats = []
        for shuffled in (False, True):
            tots = []
            for s in SEEDS:
                o = order(s, shuffled)
                paid, omegas = simulate(
                    bandit, table[np.asarray(o)], cs[o], jnp.asarray(s), contextual
                )
                tots.append(int(paid.sum()))
                runs.setdefault((name, shuffled), (paid, omegas))
            stats.append((float(np.mean(tots)), min(tots), max(tots)))
        row(f"{name}, mean of {len(SEEDS)} seeds", *stats)
    row("instance-optimal ω (oracle)", int(table.min(1).sum()))
    return runs


def main():
    t0 = time.perf_counter()
    table = get_table(0)
    t_table = time.perf_counter() - t0
    cs, keys = sequence(0)
    print(
        f"\nSOR on {T} systems 2-D Poisson {N}x{N} + cI, c in [{C_MIN}, {C_MAX}], "
        f"rel. tol {TOL:g}, max_steps {MAX_STEPS}, float64; {len(OMEGAS)} ω in [1, 1.95] "
        "(2 − ω log-spaced); held-out seeds "
        f"{SEEDS[0]}-{SEEDS[-1]}; ratios: drawn order / shuffled\n"
    )
    runs = markdown(table, cs)
    # Live, seed 100, drawn order: lax.scan over choose -> js.linear.solve -> update; each must
    # match the table replay exactly.
    for name, (bandit, contextual) in policies().items():
        live = run_bandit(bandit, cs, keys, SEEDS[0], contextual)[1]
        assert np.array_equal(np.asarray(live[0]), np.asarray(runs[(name, False)][0])), name
    print("\n(live lax.scan runs of all four policies equal the table replay)")
    print(f"(cost table {t_table:.0f} s; total script time {time.perf_counter() - t0:.0f} s)")
    if not SMALL:
        cs1, _ = sequence(1)
        print("\nA second sequence (problem key 1), same settings, nothing re-chosen:\n")
        markdown(get_table(1), cs1)

    fixed_totals = table.sum(0)
    best = int(fixed_totals.argmin())
    names = list(policies())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    ax.plot(np.arange(T), np.cumsum(table[:, 0]), label="ω = 1")
    ax.plot(np.arange(T), np.cumsum(table[:, best]), label=f"best fixed ω = {OMEGAS[best]:.2f}")
    for name in names:
        ax.plot(
            np.arange(T), np.cumsum(np.asarray(runs[(name, False)][0])), label=name.replace("`", "")
        )
    ax.plot(np.arange(T), np.cumsum(table.min(1)), "k--", label="instance-optimal")
    ax.set_xlabel("system")
    ax.set_ylabel("cumulative SOR iterations")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name in names[:2]:
        ax.scatter(
            np.asarray(cs), np.asarray(runs[(name, False)][1]), s=10, label=name.replace("`", "")
        )
    ax.plot(np.asarray(cs), np.asarray(OMEGAS)[table.argmin(1)], "k.", label="best ω per system")
    ax.set_xlabel("shift c")
    ax.set_ylabel("ω")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_bandit.png"), dpi=120)


if __name__ == "__main__":
    main()
