"""Benchmark: somascope.deconvolution against the ``oasis-deconv`` package (Friedrich's OASIS).

Prints four tables:

1. exactness on identical problems (same trace, g, lam, s_min / sn): max relative difference
   of the calcium, and how much lower the exact AR(2) objective is than the greedy pass;
2. accuracy on simulated AR(1)/AR(2) traces with known spikes: correlation of the inferred
   spikes with the truth, everything estimated from each trace by each package;
3. speed for T = 10,000: traces per second, somascope / oasis-deconv ratio;
4. real recordings (Spikefinder, 100 Hz, simultaneous electrophysiology): correlation of
   inferred activity with the true spike counts after Gaussian smoothing, per dataset.

``oasis-deconv`` is optional (``pip install oasis-deconv``); without it the peer columns are
empty. Run ``python benchmarks/bench_deconvolution.py --help`` for options.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

from somascope.deconvolution import (
    deconvolve,
    deconvolve_traces,
    estimate_noise,
    oasis_ar1,
    oasis_ar2,
    time_constants_to_ar,
)

try:  # the peer, optional
    from oasis.functions import constrained_onnlsAR2
    from oasis.functions import deconvolve as peer_deconvolve
    from oasis.oasis_methods import constrained_oasisAR1, oasisAR1, oasisAR2

    HAVE_PEER = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_PEER = False

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "spikefinder_partial"
FR = 30.0
MODELS = {"AR1": time_constants_to_ar(1.0, 0.0, FR), "AR2": time_constants_to_ar(1.0, 0.1, FR)}


def simulate(g: np.ndarray, T: int, seed: int, rate_hz: float = 0.5, sn: float = 0.3, b: float = 1.0):
    rng = np.random.default_rng(seed)
    s = (rng.random(T) < rate_hz / FR) * rng.uniform(0.5, 2.0, T)
    s[:3] = 0
    c = lfilter([1.0], np.concatenate([[1.0], -g]), s)
    return b + c + sn * rng.standard_normal(T), s


def corr(a: np.ndarray, b: np.ndarray, sigma: float = 0.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if sigma > 0:
        a, b = gaussian_filter1d(a, sigma), gaussian_filter1d(b, sigma)
    if a.std() == 0 or b.std() == 0:
        return 0.0  # an empty spike train detects nothing
    return float(np.corrcoef(a, b)[0, 1])


def rate(fn, items, min_time: float = 1.0) -> float:
    """Items per second of ``fn`` over ``items`` (repeated until ``min_time`` s; best of 3)."""
    fn(items[0])  # warm-up / compile
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            for item in items:
                fn(item)
            n += len(items)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time / 3:
                break
        best = max(best, n / elapsed)
    return best


def numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


# ------------------------------------------------------------------------------------------


def exactness(n: int) -> None:
    rows = []
    for name, g in MODELS.items():
        ys = [simulate(g, 3000, seed)[0] - 1.0 for seed in range(n)]
        for lam, s_min in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3)]:
            diffs, gains = [], []
            for y in ys:
                if name == "AR1":
                    ours, _ = oasis_ar1(y, g[0], lam, s_min)
                    peer = oasisAR1(y, g[0], lam, s_min)[0] if HAVE_PEER else None
                else:
                    ours, _ = oasis_ar2(y, g, lam, s_min, exact=False)
                    peer = oasisAR2(y, g[0], g[1], lam, s_min)[0] if HAVE_PEER else None
                    if s_min == 0:
                        ex, _ = oasis_ar2(y, g, lam)
                        gains.append(1 - _objective(y, ex, g, lam) / _objective(y, ours, g, lam))
                if peer is not None:
                    diffs.append(np.abs(ours - peer).max() / np.abs(peer).max())
            label = f"{name} lam={lam} s_min={s_min}" + (" (greedy)" if name == "AR2" else "")
            rows.append([label, fmt(max(diffs), ".1e") if diffs else "—",
                         fmt(100 * np.median(gains), ".2f") + " %" if gains else ""])
        for b_mode in ("b=0 fixed", "b estimated"):
            diffs = []
            for y in ys:
                yy = y + 1.0
                kw = {"b": 1.0} if b_mode == "b=0 fixed" else {}
                ours = deconvolve(yy, g=g, sn=0.3, **kw)
                if not HAVE_PEER:
                    continue
                if name == "AR1":
                    if kw:
                        pc = constrained_oasisAR1(yy - 1.0, g[0], 0.3, optimize_b=False)[0]
                    else:
                        pc = constrained_oasisAR1(yy, g[0], 0.3, optimize_b=True)[0]
                else:
                    if kw:
                        pc = constrained_onnlsAR2(yy - 1.0, g.copy(), 0.3, optimize_b=False)[0]
                    else:
                        pc = constrained_onnlsAR2(yy, g.copy(), 0.3, optimize_b=True)[0]
                diffs.append(np.linalg.norm(ours.c - pc) / np.linalg.norm(pc))
            rows.append([f"{name} constrained, {b_mode}", fmt(np.median(diffs), ".1e") if diffs else "—", ""])
    table("1. Identical problems (3000 frames): max |c_ours − c_peer| / max|c_peer| (constrained: "
          "median ‖Δc‖/‖c‖); exact-vs-greedy AR(2) objective decrease (median)",
          ["problem", "diff vs oasis-deconv", "exact AR(2) gain"], rows)


def _objective(y, c, g, lam):
    s = c.copy()
    s[1:] -= g[0] * c[:-1]
    if len(g) == 2:
        s[2:] -= g[1] * c[:-2]
    q = np.full(y.size, 1 - g.sum())
    q[-1] = 1.0
    if len(g) == 2:
        q[-2] = 1 - g[0]
    return 0.5 * np.sum((y - c) ** 2) + lam * q @ c


def simulated_accuracy(n: int, T: int) -> None:
    rows = []
    for name, g in MODELS.items():
        p = len(g)
        res = {"somascope": [], "somascope (CaImAn's fudge .96, lags 5)": [], "somascope (true g, sn)": [],
               "oasis-deconv": [], "oasis-deconv (true g, sn)": []}
        for seed in range(n):
            y, s = simulate(g, T, 100 + seed)
            res["somascope"].append(corr(deconvolve(y, p=p).s, s))
            res["somascope (CaImAn's fudge .96, lags 5)"].append(corr(deconvolve(y, p=p, fudge_factor=0.96, lags=5).s, s))
            res["somascope (true g, sn)"].append(corr(deconvolve(y, g=g, sn=0.3).s, s))
            if HAVE_PEER:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res["oasis-deconv"].append(corr(peer_deconvolve(y, g=(None,) * p, penalty=1)[1], s))
                    res["oasis-deconv (true g, sn)"].append(corr(peer_deconvolve(y, g=tuple(g), sn=0.3, penalty=1)[1], s))
        for method, vals in res.items():
            rows.append([name, method, fmt(np.mean(vals)) if vals else "—",
                         fmt(np.min(vals)) if vals else "—"])
    table(f"2. Simulated traces ({n} per model, T={T}, 30 Hz, 0.5 Hz spikes, σ=0.3, b=1): "
          "corr(inferred s, true s)", ["model", "method", "mean corr", "min corr"], rows)


def speed(n: int, T: int) -> None:
    rows = []
    for name, g in MODELS.items():
        p = len(g)
        ys = [simulate(g, T, 200 + k)[0] for k in range(n)]
        zs = [y - 1.0 for y in ys]
        cases = []
        if p == 1:
            cases.append(("OASIS, fixed lam", lambda y: oasis_ar1(y, g[0], 0.5),
                          (lambda y: oasisAR1(y, g[0], 0.5)) if HAVE_PEER else None, zs))
            peer_c = (lambda y: constrained_oasisAR1(y, g[0], 0.3, optimize_b=True)) if HAVE_PEER else None
        else:
            cases.append(("OASIS, fixed lam, exact", lambda y: oasis_ar2(y, g, 0.5),
                          (lambda y: oasisAR2(y, g[0], g[1], 0.5)) if HAVE_PEER else None, zs))
            cases.append(("OASIS, fixed lam, greedy", lambda y: oasis_ar2(y, g, 0.5, exact=False),
                          (lambda y: oasisAR2(y, g[0], g[1], 0.5)) if HAVE_PEER else None, zs))
            peer_c = (lambda y: constrained_onnlsAR2(y, g.copy(), 0.3, optimize_b=True)) if HAVE_PEER else None
        cases.append(("constrained (g, sn given; b, lam found)", lambda y: deconvolve(y, g=g, sn=0.3), peer_c, ys))

        def peer_auto(y, p=p):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return peer_deconvolve(y, g=(None,) * p, penalty=1)

        cases.append(("fully automatic (sn, g, b, lam)", lambda y, p=p: deconvolve(y, p=p),
                      peer_auto if HAVE_PEER else None, ys))
        for label, ours, peer, items in cases:
            r_ours = rate(ours, items)
            r_peer = rate(peer, items[: max(2, len(items) // 4)]) if peer is not None else None
            rows.append([name, label, fmt(r_ours, ".0f"), fmt(r_peer, ".0f"),
                         fmt(r_ours / r_peer, ".2f") + "×" if r_peer else "—"])
        Y = np.tile(np.stack(ys).astype(np.float32), (max(1, 40 // len(ys)), 1))
        deconvolve_traces(Y[:2], p=p)  # compile
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            deconvolve_traces(Y, p=p)
            best = max(best, Y.shape[0] / (time.perf_counter() - t0))
        rows.append([name, f"fully automatic, deconvolve_traces ({Y.shape[0]} traces, "
                     f"{numba_threads()} Numba threads)", fmt(best, ".0f"), "", ""])
    table(f"3. Speed, T={T} frames: traces per second (single thread unless noted; best of 3)",
          ["model", "task", "somascope", "oasis-deconv", "ratio"], rows)


def spikefinder(sigma_frames: float) -> None:
    import pandas as pd
    import scipy.io as sio

    if not DATA.is_dir():
        print(f"\n4. Spikefinder: data folder {DATA} not found; skipped.")
        return

    def cells():
        for stem in ["4.train", "4.test", "5.train", "5.test", "6.train"]:
            ca = pd.read_csv(DATA / f"{stem}.calcium.csv").to_numpy(dtype=np.float64).T
            sp = pd.read_csv(DATA / f"{stem}.spikes.csv").to_numpy(dtype=np.float64).T
            for c, s in zip(ca, sp):
                ok = np.isfinite(c) & np.isfinite(s)
                yield stem.split(".")[0], c[ok], s[ok]
        for k in ("1", "3"):
            data = sio.loadmat(DATA / f"data.{k}.test.preprocessed.mat", squeeze_me=True,
                               struct_as_record=False)["data"]
            for cell in np.atleast_1d(data):
                c = np.asarray(cell.calcium, dtype=np.float64)
                s = np.asarray(cell.spikes, dtype=np.float64)
                ok = np.isfinite(c) & np.isfinite(s)
                yield k, c[ok], s[ok]

    methods = {
        "somascope p=1": lambda y: deconvolve(y, p=1, bas_nonneg=False).s,
        "somascope p=1 (fudge .96, lags 5)": lambda y: deconvolve(y, p=1, bas_nonneg=False, fudge_factor=0.96, lags=5).s,
        "somascope p=1 (no band adaptation)": lambda y: deconvolve(y, p=1, bas_nonneg=False, sn=estimate_noise(y, adapt_band=False)).s,
        "somascope p=2": lambda y: deconvolve(y, p=2, bas_nonneg=False).s,
        "somascope p=2 (fudge .96, lags 5)": lambda y: deconvolve(y, p=2, bas_nonneg=False, fudge_factor=0.96, lags=5).s,
    }
    if HAVE_PEER:
        def peer(p):
            def run(y):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return peer_deconvolve(y, g=(None,) * p, b_nonneg=False, penalty=1)[1]
            return run
        methods["oasis-deconv p=1"] = peer(1)
        methods["oasis-deconv p=2"] = peer(2)
    scores: dict[tuple[str, str], list[float]] = {}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    n_cells: dict[str, int] = {}
    for ds, y, s in cells():
        n_cells[ds] = n_cells.get(ds, 0) + 1
        for m, fn in methods.items():
            t0 = time.perf_counter()
            est = fn(y)
            seconds[m] += time.perf_counter() - t0
            scores.setdefault((m, ds), []).append(corr(est, s, sigma_frames))
    datasets = sorted(n_cells)
    header = ["method"] + [f"ds {d} (n={n_cells[d]})" for d in datasets] + ["all cells", "time (s)"]
    rows = []
    for m in methods:
        vals = [np.mean(scores[(m, d)]) for d in datasets]
        allv = [v for d in datasets for v in scores[(m, d)]]
        rows.append([m] + [fmt(v) for v in vals] + [fmt(np.mean(allv)), fmt(seconds[m], ".1f")])
    table(f"4. Spikefinder (100 Hz; 1 OGB-1, 3 GCaMP6s, 4 OGB-1, 5 GCaMP6s, 6 GCaMP5k): "
          f"corr(inferred s, true spikes), Gaussian smoothing σ = {sigma_frames} frames; "
          "baseline may be negative (bas_nonneg=False for both)", header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=10, help="simulated traces per model (default 10)")
    parser.add_argument("--frames", type=int, default=10000, help="frames per simulated trace")
    parser.add_argument("--sigma", type=float, default=5.0, help="smoothing (frames) for Spikefinder")
    parser.add_argument("--skip", nargs="*", default=[], choices=["exact", "accuracy", "speed", "spikefinder"])
    args = parser.parse_args(argv)
    print(f"somascope deconvolution benchmark — oasis-deconv {'found' if HAVE_PEER else 'NOT installed'}; "
          f"python {sys.version.split()[0]}")
    if "exact" not in args.skip:
        exactness(max(2, args.traces // 2))
    if "accuracy" not in args.skip:
        simulated_accuracy(args.traces, args.frames)
    if "speed" not in args.skip:
        speed(args.traces, args.frames)
    if "spikefinder" not in args.skip:
        spikefinder(args.sigma)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory (whole process, RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
