"""Learning to Relax: choose SOR/SSOR's ω for each system of a sequence with a bandit."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array, PRNGKeyArray, Scalar

_Tracer = jax.core.Tracer  # pyright: ignore[reportAttributeAccessIssue]


class BanditState(eqx.Module):
    """The state a `RelaxationBandit` threads through a sequence (a pytree: carry it in
    `lax.scan`). `loss` is the cumulative loss of each ω per context bin (importance weighted for
    `policy="tsallis"`, the plain sum of observed losses for `policy="unimodal"`), `count` the
    number of updates per bin, `key` the random key, `plays` how often each ω was used and
    `leads` how often each ω was the leader (the empirically best ω; `"unimodal"` only).

    **Example:**

    ```python
    import jax
    import jaxsolve as js

    bandit = js.linear.RelaxationBandit(loss_scale=100)
    state = bandit.init(jax.random.PRNGKey(0))
    arm, omega, state = bandit.choose(state)
    state = bandit.update(state, arm, 40)
    assert int(state.count[0]) == 1 and bandit.omegas[0] <= omega <= bandit.omegas[-1]
    ```
    """

    loss: Array  # (num_contexts, num_arms)
    count: Array  # (num_contexts,)
    key: PRNGKeyArray
    baseline: Array  # (num_contexts,): mean observed loss so far (a predictable control variate)
    plays: Array  # (num_contexts, num_arms): times each arm was played
    leads: Array  # (num_contexts, num_arms): times each arm was the leader when one was chosen


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


def _kl_bernoulli(p: Array, q: Array) -> Array:
    tiny = jnp.finfo(q.dtype).tiny
    q = jnp.clip(q, tiny, 1.0 - jnp.finfo(q.dtype).epsneg)
    return xlogy(p, p / q) + xlogy(1.0 - p, (1.0 - p) / (1.0 - q))


def _kl_lower_bound(mean: Array, n: Array, level: Array, bisections: int = 40) -> Array:
    """KL-LCB of losses in [0, 1]: the smallest `q ≤ mean` with `n · kl(mean, q) ≤ level`
    (Garivier & Cappé 2011, for losses instead of rewards), by bisection."""

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        inside = n * _kl_bernoulli(mean, mid) <= level
        return jnp.where(inside, lo, mid), jnp.where(inside, mid, hi)

    _, hi = jax.lax.fori_loop(0, bisections, body, (jnp.zeros_like(mean), mean))
    return hi


def _jitted_method(method):
    """A method compiled once per bandit configuration and argument shapes. Called eagerly (a
    Python loop), the method body's `fori_loop`s over fresh closures were traced and compiled
    anew on every call; under an outer `jit` or `scan` the inner jit is inlined. Arguments are
    made arrays first, so new Python numbers (an iteration count, a feature) compile nothing."""
    jitted = eqx.filter_jit(method)

    @functools.wraps(method)
    def wrapper(self, state, *args, **kwargs):
        args = tuple(None if a is None else jnp.asarray(a) for a in args)
        kwargs = {k: None if a is None else jnp.asarray(a) for k, a in kwargs.items()}
        return jitted(self, state, *args, **kwargs)

    return wrapper


class RelaxationBandit(eqx.Module):
    """Learning to Relax (Khodak, Chow, Balcan & Talwalkar, ICLR 2024): pick the relaxation ω
    of SOR / SSOR / SSOR-preconditioned CG for each system in a sequence of related systems,
    from the iteration counts of the past solves only.

    Non-contextual (`num_contexts=1`): the Tsallis-INF bandit (1/2-Tsallis entropy, learning
    rate `η_t = learning_rate/√t`, importance-weighted loss estimates with the mean past loss as a
    control variate) over a grid of ω values; its total cost approaches that of the best fixed ω in
    hindsight. Each solve's loss is `min(num_steps / loss_scale, 1)`.

    `policy="unimodal"` (not in the paper; for short sequences) uses that the cost of SOR is
    unimodal in ω: OSUB (Combes & Proutière, "Unimodal bandits", ICML 2014) on the ordered
    grid, with KL lower confidence bounds on the mean loss. The leader is the ω with the
    smallest mean observed loss; every third time an ω leads it is played, otherwise the ω
    among the leader and its two grid neighbours with the smallest bound `inf{q : n kl(μ̂, q) ≤
    log(times led)}` (an untried neighbour first, so a new leader's neighbours are tried at
    once). It starts from the largest ω: for ω at or above the optimum, SOR's convergence
    factor is ω − 1 whatever the (consistently ordered, SPD) system (Young), so the largest ω
    has a moderate, predictable cost, and the policy walks down towards the optimum, each ω on
    the way once, without ever trying far-off slow ω. Only the leader's neighbours are
    explored, so the regret does not grow with the number of arms. The policy is deterministic
    (`key` is unused) and assumes i.i.d.-like systems, whereas Tsallis-INF is also sound for
    adversarial sequences. `omegas` must be increasing.

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
      [0, 1]; larger values commit faster when the sequence is short). `"tsallis"` only.
    - `policy`: `"tsallis"` (the paper's Tsallis-INF, default) or `"unimodal"` (see above).
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

    # The unimodal policy starts at the largest ω and walks down the grid to the best one.
    uni = js.linear.RelaxationBandit(jnp.linspace(1.0, 1.9, 10), loss_scale=500, policy="unimodal")
    counts = 100 + 30 * jnp.abs(jnp.arange(10) - 6)  # iterations of each ω; ω = 1.6 best
    state = uni.init(jax.random.PRNGKey(0))
    for _ in range(30):
        arm, omega, state = uni.choose(state)
        state = uni.update(state, arm, counts[arm])
    assert abs(float(uni.greedy(state)) - 1.6) < 1e-6 and int(state.plays[0, :5].sum()) == 0
    ```
    """

    omegas: Array = eqx.field(default_factory=lambda: jnp.linspace(1.0, 1.95, 20))
    loss_scale: float | Array = 1000.0
    learning_rate: float | Array = 2.0
    num_contexts: int = eqx.field(static=True, default=1)
    feature_min: float | Array = 0.0
    feature_max: float | Array = 1.0
    policy: str = eqx.field(static=True, default="tsallis")

    def __check_init__(self):
        om = self.omegas
        if not eqx.is_array(om) or om.ndim != 1 or om.size < 2:
            raise ValueError("`omegas` must be a 1-D array of at least two relaxations.")
        if not isinstance(om, _Tracer) and not bool(jnp.all((om > 0) & (om < 2))):
            raise ValueError(f"every ω in `omegas` must lie strictly between 0 and 2; got {om}.")
        if not isinstance(self.num_contexts, int) or self.num_contexts < 1:
            raise ValueError(f"`num_contexts` must be a positive int; got {self.num_contexts!r}.")
        if self.policy not in ("tsallis", "unimodal"):
            raise ValueError(f"`policy` must be 'tsallis' or 'unimodal'; got {self.policy!r}.")
        if (
            self.policy == "unimodal"
            and not isinstance(om, _Tracer)
            and not bool(jnp.all(jnp.diff(om) > 0))
        ):
            raise ValueError(
                "policy='unimodal' needs `omegas` in increasing order (it moves between grid "
                f"neighbours); got {om}. Sort them, e.g. `jnp.sort(omegas)`."
            )

    def init(self, key: PRNGKeyArray) -> BanditState:
        k = self.omegas.shape[0]
        dtype = self.omegas.dtype
        return BanditState(
            jnp.zeros((self.num_contexts, k), dtype),
            jnp.zeros(self.num_contexts, jnp.int32),
            key,
            jnp.zeros(self.num_contexts, dtype),
            jnp.zeros((self.num_contexts, k), jnp.int32),
            jnp.zeros((self.num_contexts, k), jnp.int32),
        )

    def _bin(self, feature) -> Array:
        if self.num_contexts == 1:
            return jnp.array(0)
        if feature is None:
            raise ValueError("A contextual bandit (num_contexts > 1) needs a `feature`.")
        u = (feature - self.feature_min) / (self.feature_max - self.feature_min)
        return jnp.clip(jnp.floor(u * self.num_contexts), 0, self.num_contexts - 1).astype(int)

    def _leader(self, loss: Array, plays: Array) -> tuple[Array, Array]:
        """The played arm with the smallest mean loss (the largest ω before any play), and
        whether any arm was played (one context bin)."""
        played = plays > 0
        mean = loss / jnp.maximum(plays, 1)
        leader = jnp.argmin(jnp.where(played, mean, jnp.inf))
        any_played = jnp.any(played)
        return jnp.where(any_played, leader, plays.shape[0] - 1), any_played

    def _unimodal_arm(self, loss: Array, plays: Array, leads: Array) -> Array:
        """OSUB's choice in one context bin (see the class docstring)."""
        leader, any_played = self._leader(loss, plays)
        times_led = (leads[leader] + 1).astype(loss.dtype)
        n = jnp.maximum(plays, 1).astype(loss.dtype)
        bound = _kl_lower_bound(loss / n, n, jnp.log(times_led))
        bound = jnp.where(plays > 0, bound, -jnp.inf)  # unplayed neighbours first
        near = jnp.abs(jnp.arange(plays.shape[0]) - leader) <= 1
        explore = jnp.argmin(jnp.where(near, bound, jnp.inf))
        # Start at the largest ω; then the leader on every third round it leads (γ + 1 = 3 on a
        # line), explore first: a new leader's untried neighbour is tried at once.
        play_leader = ~any_played | (leads[leader] % 3 == 2)
        return jnp.where(play_leader, leader, explore)

    @_jitted_method
    def weights(self, state: BanditState) -> Array:
        """The sampling distribution over `omegas` in each context bin, `(num_contexts, K)`
        (one-hot at the next choice for the deterministic `policy="unimodal"`)."""
        if self.policy == "unimodal":
            arms = jax.vmap(self._unimodal_arm)(state.loss, state.plays, state.leads)
            return jax.nn.one_hot(arms, self.omegas.shape[0], dtype=self.omegas.dtype)
        eta = self.learning_rate / jnp.sqrt(state.count.astype(self.omegas.dtype) + 1.0)
        return jax.vmap(_tsallis_weights)(state.loss, eta)

    @_jitted_method
    def choose(self, state: BanditState, feature=None) -> tuple[Array, Array, BanditState]:
        """Sample an arm for the next system. **Returns:** `(arm, omega, state)`."""
        ctx = self._bin(feature)
        key, sub = jax.random.split(state.key)
        if self.policy == "unimodal":
            arm = self._unimodal_arm(state.loss[ctx], state.plays[ctx], state.leads[ctx])
        else:
            w = self.weights(state)[ctx]
            arm = jax.random.choice(sub, w.shape[0], p=w)
        return arm, self.omegas[arm], eqx.tree_at(lambda s: s.key, state, key)

    @_jitted_method
    def update(self, state: BanditState, arm, num_steps, feature=None) -> BanditState:
        """Feed back the iteration count of the solve that used `omegas[arm]`."""
        ctx = self._bin(feature)
        dtype = self.omegas.dtype
        ell = jnp.clip(jnp.asarray(num_steps, dtype) / self.loss_scale, 0.0, 1.0)
        plays = state.plays.at[ctx, arm].add(1)
        count = state.count.at[ctx].add(1)
        if self.policy == "unimodal":
            leader, any_played = self._leader(state.loss[ctx], state.plays[ctx])
            leads = state.leads.at[ctx, leader].add(any_played.astype(jnp.int32))
            loss = state.loss.at[ctx, arm].add(ell)
            return BanditState(loss, count, state.key, state.baseline, plays, leads)
        w = self.weights(state)[ctx]
        # Importance weighted with a control variate B (the mean loss observed before this
        # round): ℓ̂_i = (ℓ − B) 1[i chosen] / w_i + B is unbiased for every arm; adding B to all
        # arms does not change the weights, so only the chosen arm is updated.
        base = state.baseline[ctx]
        est = (ell - base) / w[arm]
        loss = state.loss.at[ctx, arm].add(est)
        n = state.count[ctx]
        baseline = state.baseline.at[ctx].set((base * n + ell) / (n + 1))
        return BanditState(loss, count, state.key, baseline, plays, state.leads)

    @_jitted_method
    def greedy(self, state: BanditState, feature=None) -> Array:
        """The ω with the largest weight (`"tsallis"`) or the leader, the played ω with the
        smallest mean loss (`"unimodal"`), for evaluation after learning."""
        ctx = self._bin(feature)
        if self.policy == "unimodal":
            return self.omegas[self._leader(state.loss[ctx], state.plays[ctx])[0]]
        return self.omegas[jnp.argmax(self.weights(state)[ctx])]
