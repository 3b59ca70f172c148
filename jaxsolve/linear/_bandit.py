"""Learning to Relax: choose SOR/SSOR's ω for each system of a sequence with a bandit."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, Scalar


class BanditState(eqx.Module):
    """The state a `RelaxationBandit` threads through a sequence (a pytree: carry it in
    `lax.scan`). `loss` is the importance-weighted cumulative loss of each ω (per context bin),
    `count` the number of updates per bin, `key` the random key.

    **Example:**

    ```python
    import jax
    import jaxsolve as js

    bandit = js.linear.RelaxationBandit(loss_scale=100)
    state = bandit.init(jax.random.PRNGKey(0))
    arm, omega, state = bandit.choose(state)
    state = bandit.update(state, arm, 40)
    assert int(state.count[0]) == 1 and 1.0 <= float(omega) <= 1.95
    ```
    """

    loss: Array  # (num_contexts, num_arms)
    count: Array  # (num_contexts,)
    key: PRNGKeyArray
    baseline: Array  # (num_contexts,): mean observed loss so far (a predictable control variate)


def _tsallis_weights(loss: Array, eta: Scalar, newton_steps: int = 30) -> Array:
    """Tsallis-INF (α = 1/2) weights `w_i = 4 / (η (L_i − x))²` with `x` the normaliser that makes
    them sum to one (Zimmert & Seldin 2021), found by Newton's method from below."""
    loss = loss - jnp.min(loss)
    x = -2.0 / eta  # w at the best arm is 1 here, so Σw ≥ 1 and x increases monotonically

    def body(_, x):
        w = 4.0 / (eta * (loss - x)) ** 2
        return x - (jnp.sum(w) - 1.0) / (eta * jnp.sum(w**1.5))

    x = jax.lax.fori_loop(0, newton_steps, body, x)
    w = 4.0 / (eta * (loss - x)) ** 2
    return w / jnp.sum(w)


class RelaxationBandit(eqx.Module):
    """Learning to Relax (Khodak, Chow, Balcan & Talwalkar, ICLR 2024): pick the relaxation ω
    of SOR / SSOR / SSOR-preconditioned CG for each system in a sequence of related systems,
    from the iteration counts of the past solves only.

    Non-contextual (`num_contexts=1`): the Tsallis-INF bandit (1/2-Tsallis entropy, learning
    rate `η_t = learning_rate/√t`, importance-weighted loss estimates with the mean past loss as a
    control variate) over a grid of ω values; its total cost approaches that of the best fixed ω in
    hindsight. Each solve's loss is `min(num_steps / loss_scale, 1)`.

    Contextual (`num_contexts > 1`): a cheap scalar feature of each system (e.g. the diagonal
    shift `c` of `A + cI`, or a coefficient contrast) in `[feature_min, feature_max]` is split
    into `num_contexts` equal bins and one Tsallis-INF learner runs per bin, so the policy can
    approach the instance-optimal ω piecewise. (The paper's contextual method, ChebCB, fits a
    Chebyshev regression of cost on the feature; this binning is a simpler variant with the same
    interface.)

    All methods are pure: `init(key) -> state`, `choose(state, feature) -> (arm, omega, state)`,
    `update(state, arm, num_steps, feature) -> state`; use them in a Python loop or `lax.scan`.

    **Arguments:**

    - `omegas`: the grid of ω (default 20 values evenly spaced in [1, 1.95]).
    - `loss_scale`: iteration count that counts as loss 1 (e.g. a few times a typical count;
      larger counts are clipped to loss 1).
    - `learning_rate`: `η_t = learning_rate / √t` (2 is the theory's choice for losses in
      [0, 1]; larger values commit faster when the sequence is short).
    - `num_contexts`, `feature_min`, `feature_max`: the contextual binning (see above).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    bandit = js.linear.RelaxationBandit(loss_scale=500)
    b = jnp.ones((8, 8))

    def one_system(state, c):
        arm, omega, state = bandit.choose(state)
        A = js.linear.Stencil5.poisson((8, 8), shift=c)
        sol = js.linear.solve(A, b, js.linear.SOR(omega, tol=1e-6, max_steps=500), throw=False)
        state = bandit.update(state, arm, sol.stats["num_steps"])
        return state, sol.stats["num_steps"]

    cs = jax.random.uniform(jax.random.PRNGKey(1), (30,), maxval=0.1)
    state, iters = jax.lax.scan(one_system, bandit.init(jax.random.PRNGKey(0)), cs)
    assert iters.shape == (30,) and bandit.weights(state).shape == (1, 20)
    ```
    """

    omegas: Array = eqx.field(default_factory=lambda: jnp.linspace(1.0, 1.95, 20))
    loss_scale: float | Array = 1000.0
    learning_rate: float | Array = 2.0
    num_contexts: int = eqx.field(static=True, default=1)
    feature_min: float | Array = 0.0
    feature_max: float | Array = 1.0

    def __check_init__(self):
        om = self.omegas
        if not eqx.is_array(om) or om.ndim != 1 or om.size < 2:
            raise ValueError("`omegas` must be a 1-D array of at least two relaxations.")
        if not isinstance(om, jax.core.Tracer) and not bool(jnp.all((om > 0) & (om < 2))):
            raise ValueError(f"every ω in `omegas` must lie strictly between 0 and 2; got {om}.")
        if not isinstance(self.num_contexts, int) or self.num_contexts < 1:
            raise ValueError(f"`num_contexts` must be a positive int; got {self.num_contexts!r}.")

    def init(self, key: PRNGKeyArray) -> BanditState:
        k = self.omegas.shape[0]
        dtype = self.omegas.dtype
        return BanditState(
            jnp.zeros((self.num_contexts, k), dtype),
            jnp.zeros(self.num_contexts, jnp.int32),
            key,
            jnp.zeros(self.num_contexts, dtype),
        )

    def _bin(self, feature) -> Array:
        if self.num_contexts == 1:
            return jnp.array(0)
        if feature is None:
            raise ValueError("A contextual bandit (num_contexts > 1) needs a `feature`.")
        u = (feature - self.feature_min) / (self.feature_max - self.feature_min)
        return jnp.clip(jnp.floor(u * self.num_contexts), 0, self.num_contexts - 1).astype(int)

    def weights(self, state: BanditState) -> Array:
        """The sampling distribution over `omegas` in each context bin, `(num_contexts, K)`."""
        eta = self.learning_rate / jnp.sqrt(state.count.astype(self.omegas.dtype) + 1.0)
        return jax.vmap(_tsallis_weights)(state.loss, eta)

    def choose(self, state: BanditState, feature=None) -> tuple[Array, Array, BanditState]:
        """Sample an arm for the next system. **Returns:** `(arm, omega, state)`."""
        ctx = self._bin(feature)
        key, sub = jax.random.split(state.key)
        w = self.weights(state)[ctx]
        arm = jax.random.choice(sub, w.shape[0], p=w)
        return arm, self.omegas[arm], eqx.tree_at(lambda s: s.key, state, key)

    def update(self, state: BanditState, arm, num_steps, feature=None) -> BanditState:
        """Feed back the iteration count of the solve that used `omegas[arm]`."""
        ctx = self._bin(feature)
        w = self.weights(state)[ctx]
        ell = jnp.clip(jnp.asarray(num_steps, w.dtype) / self.loss_scale, 0.0, 1.0)
        # Importance weighted with a control variate B (the mean loss observed before this
        # round): ℓ̂_i = (ℓ − B) 1[i chosen] / w_i + B is unbiased for every arm; adding B to all
        # arms does not change the weights, so only the chosen arm is updated.
        base = state.baseline[ctx]
        est = (ell - base) / w[arm]
        loss = state.loss.at[ctx, arm].add(est)
        n = state.count[ctx]
        count = state.count.at[ctx].add(1)
        baseline = state.baseline.at[ctx].set((base * n + ell) / (n + 1))
        return BanditState(loss, count, state.key, baseline)

    def greedy(self, state: BanditState, feature=None) -> Array:
        """The ω with the largest weight (for evaluation after learning)."""
        return self.omegas[jnp.argmax(self.weights(state)[self._bin(feature)])]
