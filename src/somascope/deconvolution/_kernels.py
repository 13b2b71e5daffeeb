"""Numba kernels of OASIS (Friedrich, Zhou & Paninski, PLoS Comput Biol 2017).

Leaf module: it imports Numba at top level, so the rest of the package imports it lazily,
inside functions. Every kernel works in float64 on one trace; ``solve_many`` runs
``solve_trace`` over the rows of a K×T array in parallel (``numba.prange``).

For a fixed penalty ``lam`` the problem is

    minimise ½‖y' − c‖²   subject to  s = Gc >= s_min or s = 0,

where ``y' = y − b − lam·q`` folds the L1 penalty ``lam·Σ s`` into the data (``q = Gᵀ1``:
``1 − Σg`` inside the trace, with the last ``p`` frames corrected). Rows of ``G``:
``c[0] >= 0``; for AR(1) ``c[t] − g·c[t-1]``; for AR(2) ``c[1] − d·c[0]`` and
``c[t] − g1·c[t-1] − g2·c[t-2]`` (``d``: the decay root), i.e. the calcium present when the
recording starts decays freely and ``s`` is reported as 0 in the first ``p`` frames.

A *pool* is a run of frames without a spike inside. The active-set pass (pool adjacent
violators) appends one frame at a time and merges the newest pool into the previous one
while the spike between them would be negative (or below ``s_min``).

- AR(1) pools: start ``t``, length ``l``, value at the start ``v = Σ g^k y'[t+k] / w`` with
  weight ``w = Σ g^2k``, and ``gl = g**l``. The pass is exact for ``s_min = 0``.
- AR(2) pools (greedy pass): start ``t``, length ``l``, ``v`` first value, ``w`` last value,
  ``S = Σ h[k] y'[t+k]`` with ``h`` the response to a unit jump. The first pool decays as
  ``v·d**k``; every later pool continues the previous one's last two values plus its jump.
  This greedy pass is not always optimal, so by default it only warm-starts an exact
  solver (``ar2_exact``): block principal pivoting on the spike set of the equivalent
  non-negative least-squares problem (Júdice & Pires 1994; Kim & Park 2011), in which the
  least-squares fit for a given set of spike times is computed in O(T) by dynamic
  programming over the pools (``pool_ls``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Block-pivoting iterations before the exact AR(2) solver gives up and keeps the greedy pass.
EXACT_MAX_ITER = 1000

# ------------------------------------------------------------------------------------------
# AR(1)


@njit(cache=True, nogil=True)
def ar1_pass(yp, g, s_min, val, w, t, l, gl):  # pragma: no cover - compiled
    """Forward pass of OASIS-AR(1) on penalised data ``yp``; returns the number of pools."""
    T = yp.shape[0]
    val[0] = yp[0]
    w[0] = 1.0
    t[0] = 0
    l[0] = 1
    gl[0] = g
    i = 0
    for k in range(1, T):
        i += 1
        vi = yp[k]
        wi = 1.0
        li = 1
        gi = g
        # the newest pool joins the previous one while the spike between them is too small
        while i > 0 and val[i - 1] * gl[i - 1] + s_min > vi:
            f = gl[i - 1]
            wp = w[i - 1]
            wn = wp + wi * f * f
            vi = (val[i - 1] * wp + vi * wi * f) / wn
            wi = wn
            li += l[i - 1]
            gi *= f
            i -= 1
        val[i] = vi
        w[i] = wi
        l[i] = li
        gl[i] = gi
        t[i] = k - li + 1
    return i + 1


@njit(cache=True, nogil=True)
def ar1_fill(v, t, l, n, g, s_min, c):  # pragma: no cover - compiled
    """Calcium ``c`` from AR(1) pools; a first pool below 0, or a later one below s_min, is 0."""
    for j in range(n):
        val = v[j]
        if (j == 0 and val < 0.0) or (j > 0 and val < s_min):
            val = 0.0
        k0 = t[j]
        for k in range(l[j]):
            c[k0 + k] = val
            val *= g


@njit(cache=True, nogil=True)
def ar1_project(x, w, t, l, n, g, c, out):  # pragma: no cover - compiled
    """The AR(1) pool fit of ``x`` for a fixed partition (pools at 0 in ``c`` stay at 0)."""
    for j in range(n):
        k0 = t[j]
        val = 0.0
        if c[k0] > 0.0:
            num = 0.0
            pw = 1.0
            for k in range(l[j]):
                num += pw * x[k0 + k]
                pw *= g
            val = num / w[j]
        for k in range(l[j]):
            out[k0 + k] = val
            val *= g


# ------------------------------------------------------------------------------------------
# AR(2)


@njit(cache=True, nogil=True)
def make_tables(p, g1, g2, T):  # pragma: no cover - compiled
    """Decay root ``d`` and the tables of the pool algebra ``(h, h2, hh, hh2, h2h2, dpow, dd)``.

    ``h[k]``: response at lag k to a unit jump at the start of a pool (``h[0] = 1``);
    ``h2[k]``: response to a unit value in the frame just before the pool; ``hh``, ``hh2``,
    ``h2h2``: cumulative sums of ``h·h``, ``h·h2``, ``h2·h2``; ``dpow[k] = d**k`` and ``dd``
    the cumulative sum of ``d**2k`` (first pool). Length ``T + 1`` (length 1 for AR(1)).
    """
    if p == 1:
        one = np.ones(1)
        return g1, (one, one, one, one, one, one, one)
    sq = np.sqrt(max(g1 * g1 + 4.0 * g2, 0.0))
    d = (g1 + sq) / 2.0
    h = np.empty(T + 1)
    h2 = np.empty(T + 1)
    h[0] = 1.0
    h2[0] = 0.0
    if T >= 1:
        h[1] = g1
        h2[1] = g2
    for k in range(2, T + 1):
        h[k] = g1 * h[k - 1] + g2 * h[k - 2]
        h2[k] = g2 * h[k - 1]
    dpow = np.empty(T + 1)
    dpow[0] = 1.0
    for k in range(1, T + 1):
        dpow[k] = dpow[k - 1] * d
    return d, (h, h2, np.cumsum(h * h), np.cumsum(h * h2), np.cumsum(h2 * h2), dpow,
               np.cumsum(dpow * dpow))


@njit(cache=True, nogil=True)
def ar2_pass(yp, d, s_min, tabs, v, w, t, l, S):  # pragma: no cover - compiled
    """Greedy forward pass of OASIS-AR(2) on penalised data ``yp``; returns the number of pools."""
    h, h2, hh, hh2, _, dpow, dd = tabs
    T = yp.shape[0]
    S[0] = yp[0]
    t[0] = 0
    l[0] = 1
    v[0] = max(0.0, yp[0])
    w[0] = v[0]
    i = 0
    for k in range(1, T):
        i += 1
        v[i] = yp[k]
        w[i] = yp[k]
        S[i] = yp[k]
        t[i] = k
        l[i] = 1
        while i > 0:
            if i > 1:
                pred = h[l[i - 1]] * v[i - 1] + h2[l[i - 1]] * w[i - 2]
            else:
                pred = d * w[0]
            if not pred > v[i] - s_min:
                break
            j = i - 1  # pool i joins pool j
            offset = l[j]
            ti = t[i]
            acc = 0.0
            if j == 0:
                for m in range(l[i]):
                    acc += dpow[offset + m] * yp[ti + m]
            else:
                for m in range(l[i]):
                    acc += h[offset + m] * yp[ti + m]
            S[j] += acc
            l[j] = offset + l[i]
            last = l[j] - 1
            if j == 0:
                v[0] = max(0.0, S[0] / dd[last])
                w[0] = v[0] * dpow[last]
            else:
                v[j] = (S[j] - hh2[last] * w[j - 1]) / hh[last]
                w[j] = h[last] * v[j] + h2[last] * w[j - 1]
            i = j
    return i + 1


@njit(cache=True, nogil=True)
def ar2_fill(v, w, t, l, n, tabs, c):  # pragma: no cover - compiled
    """Calcium ``c`` from greedy AR(2) pools."""
    h, h2, _, _, _, dpow, _ = tabs
    for k in range(l[0]):
        c[k] = v[0] * dpow[k]
    for j in range(1, n):
        k0 = t[j]
        vj = v[j]
        wp = w[j - 1]
        for k in range(l[j]):
            c[k0 + k] = h[k] * vj + h2[k] * wp


@njit(cache=True, nogil=True)
def ar2_project(x, t, l, n, first_active, tabs, out):  # pragma: no cover - compiled
    """The greedy AR(2) pool map applied to ``x`` for a fixed partition (a clipped first pool stays 0)."""
    h, h2, hh, hh2, _, dpow, dd = tabs
    val = 0.0
    if first_active:
        num = 0.0
        for k in range(l[0]):
            num += dpow[k] * x[k]
        val = num / dd[l[0] - 1]
    for k in range(l[0]):
        out[k] = val * dpow[k]
    wprev = val * dpow[l[0] - 1]
    for j in range(1, n):
        k0 = t[j]
        last = l[j] - 1
        num = 0.0
        for k in range(l[j]):
            num += h[k] * x[k0 + k]
        vj = (num - hh2[last] * wprev) / hh[last]
        for k in range(l[j]):
            out[k0 + k] = h[k] * vj + h2[k] * wprev
        wprev = h[last] * vj + h2[last] * wprev


@njit(cache=True, nogil=True)
def pool_ls(x, start, free0, tabs, ps, A, B, R, c):  # pragma: no cover - compiled
    """Least-squares AR(2) fit ``c`` of ``x`` with jumps allowed exactly at the pool starts.

    ``start[t]``: a pool starts at t (``start[0]`` is implied); ``free0``: the first pool's
    amplitude is free (else 0). Within pool j the calcium is ``h[k]·x_j + h2[k]·p_j`` with
    ``x_j`` its first value and ``p_j`` the last value of pool j−1, and ``p_{j+1}`` is linear
    in ``(x_j, p_j)``; a backward pass over pools accumulates the quadratic cost-to-go
    ``α p² − 2β p`` and a forward pass recovers the optimal ``x_j``. O(T). Returns the
    number of pools (their starts in ``ps``).
    """
    h, h2, hh, hh2, h2h2, dpow, dd = tabs
    T = x.shape[0]
    n = 1
    ps[0] = 0
    for k in range(1, T):
        if start[k]:
            ps[n] = k
            n += 1
    ps[n] = T
    alpha = 0.0
    beta = 0.0
    for j in range(n - 1, 0, -1):
        t0 = ps[j]
        L = ps[j + 1] - t0
        yh = 0.0
        yh2 = 0.0
        for k in range(L):
            yh += h[k] * x[t0 + k]
            yh2 += h2[k] * x[t0 + k]
        a = h[L - 1]
        b = h2[L - 1]
        Aj = hh[L - 1] + alpha * a * a
        Bj = hh2[L - 1] + alpha * a * b
        Rj = yh + beta * a
        A[j] = Aj
        B[j] = Bj
        R[j] = Rj
        alpha = h2h2[L - 1] + alpha * b * b - Bj * Bj / Aj
        beta = yh2 + beta * b - Rj * Bj / Aj
    L0 = ps[1]
    x0 = 0.0
    if free0:
        yh = 0.0
        for k in range(L0):
            yh += dpow[k] * x[k]
        a = dpow[L0 - 1]
        x0 = (yh + beta * a) / (dd[L0 - 1] + alpha * a * a)
    for k in range(L0):
        c[k] = x0 * dpow[k]
    prev = x0 * dpow[L0 - 1]
    for j in range(1, n):
        t0 = ps[j]
        L = ps[j + 1] - t0
        xj = (R[j] - B[j] * prev) / A[j]
        for k in range(L):
            c[t0 + k] = h[k] * xj + h2[k] * prev
        prev = h[L - 1] * xj + h2[L - 1] * prev
    return n


@njit(cache=True, nogil=True)
def ar2_exact(yp, g1, g2, d, tabs, start, state, fw, ps, c):  # pragma: no cover - compiled
    """Exact AR(2) solution by block principal pivoting, from the partition in ``start``/``state``.

    The problem is the linear complementarity system of the non-negative least squares in
    the spikes: at a spike time the spike is >= 0, elsewhere the multiplier
    ``mu = G⁻ᵀ(c − y')`` (the gradient in the spike) is >= 0. Each iteration fits ``c`` for
    the current spike set (``pool_ls``), computes ``mu`` by a backward recursion and flips
    every infeasible index; when that stops reducing the number of infeasible indices for
    3 iterations, one index is flipped at a time (the last infeasible one: Murty's rule,
    finite for this positive-definite problem). Returns the iterations used or −1.
    """
    T = yp.shape[0]
    h = tabs[0]
    _, _, _, A, B, R, mu = fw
    ymax = 0.0
    for k in range(T):
        ymax = max(ymax, abs(yp[k]))
    ksum = 0.0
    for k in range(T):
        ksum += abs(h[k])
    tol_s = 1e-10 * (ymax + 1e-300)
    tol_mu = tol_s * max(ksum, 1.0)
    best = T + 2
    backup = 3
    for it in range(EXACT_MAX_ITER):
        pool_ls(yp, start, state[1] == 1, tabs, ps, A, B, R, c)
        for k in range(T - 1, -1, -1):
            val = c[k] - yp[k]
            if k + 1 < T:
                val += (d if k == 0 else g1) * mu[k + 1]
            if k + 2 < T:
                val += g2 * mu[k + 2]
            mu[k] = val
        n_bad = 0
        last = -1
        for k in range(T):
            if k == 0:
                bad = c[0] < -tol_s if state[1] == 1 else mu[0] < -tol_mu
            elif start[k]:
                jump = c[k] - (d * c[0] if k == 1 else g1 * c[k - 1] + g2 * c[k - 2])
                bad = jump < -tol_s
            else:
                bad = mu[k] < -tol_mu
            if bad:
                n_bad += 1
                last = k
        if n_bad == 0:
            return it + 1
        if n_bad < best:
            best = n_bad
            backup = 3
            block = True
        elif backup > 0:
            backup -= 1
            block = True
        else:
            block = False
        if not block:
            if last == 0:
                state[1] = 1 - state[1]
            else:
                start[last] = not start[last]
            continue
        for k in range(T):
            if k == 0:
                if state[1] == 1:
                    if c[0] < -tol_s:
                        state[1] = 0
                elif mu[0] < -tol_mu:
                    state[1] = 1
            elif start[k]:
                jump = c[k] - (d * c[0] if k == 1 else g1 * c[k - 1] + g2 * c[k - 2])
                if jump < -tol_s:
                    start[k] = False
            elif mu[k] < -tol_mu:
                start[k] = True
    return -1


# ------------------------------------------------------------------------------------------
# shared pieces


@njit(cache=True, nogil=True)
def penalty_shift(p, g1, g2, T):  # pragma: no cover - compiled
    """``q = Gᵀ1``, so that ``Σ_t s_t = q · c``."""
    q = np.empty(T)
    if p == 1:
        q[:] = 1.0 - g1
    else:
        q[:] = 1.0 - g1 - g2
        if T >= 2:
            q[T - 2] = 1.0 - g1
    q[T - 1] = 1.0
    return q


@njit(cache=True, nogil=True)
def spikes_from_calcium(c, p, g1, g2, s):  # pragma: no cover - compiled
    """``s = Gc`` with the first ``p`` frames set to 0 (they reflect earlier calcium)."""
    T = c.shape[0]
    for k in range(min(p, T)):
        s[k] = 0.0
    if p == 1:
        for k in range(1, T):
            s[k] = c[k] - g1 * c[k - 1]
    else:
        for k in range(2, T):
            s[k] = c[k] - g1 * c[k - 1] - g2 * c[k - 2]


@njit(cache=True, nogil=True)
def make_work(T):  # pragma: no cover - compiled
    """Work arrays: floats ``(v, w, S, A, B, R, mu)``, ints ``(t, l, ps)``, ``start`` and ``state``.

    ``state = [partition known, first pool free, greedy fallback in use]`` for exact AR(2).
    """
    fw = (np.empty(T), np.empty(T), np.empty(T), np.empty(T), np.empty(T), np.empty(T), np.empty(T))
    iw = (np.empty(T, np.int64), np.empty(T, np.int64), np.empty(T + 1, np.int64))
    start = np.zeros(T, np.bool_)
    state = np.zeros(3, np.int64)
    return fw, iw, start, state


@njit(cache=True, nogil=True)
def fit(yp, p, exact, g1, g2, d, s_min, tabs, fw, iw, start, state, c):  # pragma: no cover
    """Solve for fixed penalty (already folded into ``yp``) and ``s_min``; fills ``c``.

    Returns the number of greedy pools (0 when the exact AR(2) solver produced ``c``).
    Exact AR(2) keeps its spike set in ``start``/``state`` to warm-start the next call.
    """
    v, w, S, _, _, _, _ = fw
    t, l, ps = iw
    if p == 1:
        n = ar1_pass(yp, g1, s_min, v, w, t, l, S)
        ar1_fill(v, t, l, n, g1, s_min, c)
        return n
    if exact and s_min == 0.0:
        if state[0] == 0:
            n = ar2_pass(yp, d, 0.0, tabs, v, w, t, l, S)
            start[:] = False
            for j in range(1, n):
                start[t[j]] = True
            state[1] = 1 if v[0] > 0.0 else 0
            state[0] = 1
        if ar2_exact(yp, g1, g2, d, tabs, start, state, fw, ps, c) >= 0:
            state[2] = 0
            return 0
        state[0] = 0  # no convergence: keep the greedy solution
        state[2] = 1
    n = ar2_pass(yp, d, s_min, tabs, v, w, t, l, S)
    ar2_fill(v, w, t, l, n, tabs, c)
    return n


@njit(cache=True, nogil=True)
def project(x, p, exact, g1, tabs, fw, iw, n, start, state, c, out):  # pragma: no cover
    """The linear map ``x -> c`` of the current solution's partition (derivatives of ``c``)."""
    v, w, _, A, B, R, _ = fw
    t, l, ps = iw
    if p == 1:
        ar1_project(x, w, t, l, n, g1, c, out)
    elif exact and state[2] == 0:
        pool_ls(x, start, state[1] == 1, tabs, ps, A, B, R, out)
    else:
        ar2_project(x, t, l, n, v[0] > 0.0, tabs, out)


@njit(cache=True, nogil=True)
def oasis_fixed(y, p, exact, g1, g2, lam, s_min, c, s):  # pragma: no cover - compiled
    """OASIS for fixed ``lam`` and ``s_min`` (no baseline): fills ``c`` and ``s``."""
    T = y.shape[0]
    d, tabs = make_tables(p, g1, g2, T)
    fw, iw, start, state = make_work(T)
    yp = y - lam * penalty_shift(p, g1, g2, T)
    fit(yp, p, exact, g1, g2, d, s_min, tabs, fw, iw, start, state, c)
    spikes_from_calcium(c, p, g1, g2, s)


# ------------------------------------------------------------------------------------------
# the noise-constrained problem


@njit(cache=True, nogil=True)
def solve_trace(
    y, p, exact, g1, g2, sn, lam, auto_lam, b, optimize_b, b_nonneg, smin_mode, smin_val,
    max_iter, tol, c, s,
):  # pragma: no cover - compiled
    """Deconvolve one trace; fills ``c`` (without baseline) and ``s``; returns ``(b, lam, iters)``.

    auto_lam: find ``lam >= 0`` with ``‖y − b − c‖² = sn²·T`` (the noise constraint);
    otherwise ``lam`` is kept. optimize_b: choose the baseline ``b`` jointly (mean residual
    0, ``b >= 0`` if ``b_nonneg``), otherwise keep ``b``. For a fixed partition ``c`` is
    linear in ``(b, lam)``, so the residual is affine in ``lam`` and the constraint is a
    quadratic equation whose root gives the next ``lam`` (Newton on the piecewise-quadratic
    residual), safeguarded by bisection on a bracket.

    smin_mode: 0 none; 1 absolute ``s_min = smin_val``; 2 automatic (the largest threshold
    that keeps ``‖y − b − c‖² <= sn²·T``); 3 relative ``s_min = smin_val·sn·sqrt(1 − d)``.
    With a threshold ``c`` is refitted on ``y − b`` without L1 penalty, every spike at least
    ``s_min`` (greedy hard-threshold OASIS).
    """
    T = y.shape[0]
    d, tabs = make_tables(p, g1, g2, T)
    fw, iw, start, state = make_work(T)
    q = penalty_shift(p, g1, g2, T)
    yp = np.empty(T)
    r = np.empty(T)
    Bv = np.empty(T)
    U = np.empty(T)
    ones = np.ones(T)
    thresh = sn * sn * T
    if optimize_b:
        b = np.percentile(y, 15.0)
        if b_nonneg and b < 0.0:
            b = 0.0
    lo = 0.0
    hi = np.inf
    iters = 0
    n = 0
    dirty = False  # c was moved linearly, or (b, lam) changed, after the last pass
    for it in range(max_iter):
        iters = it + 1
        for k in range(T):
            yp[k] = y[k] - b - lam * q[k]
        n = fit(yp, p, exact, g1, g2, d, 0.0, tabs, fw, iw, start, state, c)
        dirty = False
        mB = 0.0
        db = 0.0
        if optimize_b:
            project(ones, p, exact, g1, tabs, fw, iw, n, start, state, c, Bv)
            mB = Bv.mean()
            if 1.0 - mB > 1e-10:
                mr = 0.0
                for k in range(T):
                    mr += y[k] - b - c[k]
                mr /= T
                bn = b + mr / (1.0 - mB)
                if b_nonneg and bn < 0.0:
                    bn = 0.0
                db = bn - b
                if db != 0.0:
                    for k in range(T):
                        c[k] -= db * Bv[k]
                    dirty = True
                b = bn
        rss = 0.0
        csum = 0.0
        for k in range(T):
            r[k] = y[k] - b - c[k]
            rss += r[k] * r[k]
            csum += abs(c[k])
        if not auto_lam:
            if (not optimize_b) or abs(db) <= 1e-10 * (abs(b) + sn + 1e-300):
                break
            continue
        if abs(rss - thresh) <= tol * thresh:
            break
        if rss < thresh:
            lo = max(lo, lam)
            if csum <= 0.0:
                break  # the spike train is empty: a larger lam changes nothing
        else:
            hi = min(hi, lam)
            if lam <= 0.0:
                break  # even the unpenalised fit leaves more than sn²·T
        project(q, p, exact, g1, tabs, fw, iw, n, start, state, c, U)
        beta = 0.0
        clamped = b_nonneg and b <= 0.0
        if optimize_b and (not clamped) and 1.0 - mB > 1e-10:
            beta = U.mean() / (1.0 - mB)
        a2 = 0.0
        a1 = 0.0
        for k in range(T):
            z = U[k] - beta * (1.0 - Bv[k]) if beta != 0.0 else U[k]
            a2 += z * z
            a1 += r[k] * z
        if a2 <= 0.0:
            break
        a0 = rss - thresh
        disc = a1 * a1 - a2 * a0
        if disc >= 0.0:
            step = (-a1 + np.sqrt(disc)) / a2
        else:
            step = -a1 / a2
        new = lam + step
        if not (lo < new < hi):
            if hi < np.inf:
                new = 0.5 * (lo + hi)
            else:
                new = 2.0 * lo if lo > 0.0 else max(step, 0.0)
        new = max(new, 0.0)
        if optimize_b and beta != 0.0:
            b += beta * (new - lam)
            if b_nonneg and b < 0.0:
                b = 0.0
        lam = new
        dirty = True
    if dirty:
        for k in range(T):
            yp[k] = y[k] - b - lam * q[k]
        fit(yp, p, exact, g1, g2, d, 0.0, tabs, fw, iw, start, state, c)

    if smin_mode != 0:
        for k in range(T):
            yp[k] = y[k] - b
        if smin_mode == 2:
            spikes_from_calcium(c, p, g1, g2, s)
            cmax = 0.0
            for k in range(T):
                cmax = max(cmax, abs(c[k]))
            cand = np.sort(s[s > 1e-9 * cmax])
            best = -1
            lo_i = 0
            hi_i = cand.shape[0] - 1
            trial = np.empty(T)
            while lo_i <= hi_i:
                mid = (lo_i + hi_i) // 2
                fit(yp, p, exact, g1, g2, d, cand[mid], tabs, fw, iw, start, state, trial)
                rss = 0.0
                for k in range(T):
                    rss += (yp[k] - trial[k]) ** 2
                if rss <= thresh:
                    best = mid
                    lo_i = mid + 1
                else:
                    hi_i = mid - 1
            if best >= 0:
                fit(yp, p, exact, g1, g2, d, cand[best], tabs, fw, iw, start, state, c)
        else:
            thr = smin_val if smin_mode == 1 else smin_val * sn * np.sqrt(max(1.0 - d, 0.0))
            fit(yp, p, exact, g1, g2, d, thr, tabs, fw, iw, start, state, c)
    spikes_from_calcium(c, p, g1, g2, s)
    return b, lam, iters


@njit(cache=True, parallel=True)
def solve_many(
    Y, p, exact, G, SN, LAM, auto_lam, B0, optimize_b, b_nonneg, smin_mode, smin_val,
    max_iter, tol, C, S, b_out, lam_out,
):  # pragma: no cover - compiled
    """``solve_trace`` over the rows of ``Y`` (K×T float64) in parallel; C and S are float32."""
    K, T = Y.shape
    for k in prange(K):
        y = Y[k].copy()
        c = np.empty(T)
        s = np.empty(T)
        b, lam, _ = solve_trace(
            y, p, exact, G[k, 0], G[k, 1], SN[k], LAM[k], auto_lam, B0[k], optimize_b,
            b_nonneg, smin_mode, smin_val, max_iter, tol, c, s,
        )
        for j in range(T):
            C[k, j] = c[j]
            S[k, j] = s[j]
        b_out[k] = b
        lam_out[k] = lam
