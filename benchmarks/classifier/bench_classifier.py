"""Speed of the shape classifier's inference, and the cost it adds to ``import somascope``.

    .venv/bin/python benchmarks/classifier/bench_classifier.py [--n 20000]

Times, on simulated footprints (discs, rings and blobs of radius 5–10 px in a 512 × 512 field):
cutting the crops (:func:`component_crops`), the forward pass (:func:`forward`, after the
Numba kernel's first compilation, which is cached on disk) and both together (:func:`predict`),
in components per second; with PyTorch installed, its own forward pass of the same weights on
the same crops, in the same run, for the ratio. Then ``import somascope`` in a fresh interpreter
(best of 5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]


def footprints(n: int, dims: tuple[int, int] = (512, 512), seed: int = 0) -> sp.csc_matrix:
    """``n`` Gaussian-edged discs of random radius and centre, ``pixels × n`` CSC."""
    rng = np.random.default_rng(seed)
    H, W = dims
    data, rows, cols = [], [], []
    for k in range(n):
        r = rng.uniform(5, 10)
        cy, cx = rng.uniform(r + 2, H - r - 2), rng.uniform(r + 2, W - r - 2)
        y0, y1 = int(cy - 2 * r), int(cy + 2 * r) + 1
        x0, x1 = int(cx - 2 * r), int(cx + 2 * r) + 1
        yy, xx = np.mgrid[max(y0, 0):min(y1, H), max(x0, 0):min(x1, W)]
        d = np.hypot((yy - cy) / rng.uniform(0.8, 1.2), xx - cx)
        v = np.exp(-0.5 * np.maximum(d - r, 0) ** 2) * (d < 1.5 * r)
        keep = v > 0.01
        data.append(v[keep])
        rows.append((yy[keep] * W + xx[keep]).ravel())
        cols.append(np.full(int(keep.sum()), k))
    return sp.csc_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(H * W, n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args(argv)
    from somascope.evaluation.classifier import component_crops
    from somascope.evaluation.classifier.cnn import forward, load_weights, predict

    w = load_weights()
    A = footprints(args.n)
    dims = (512, 512)
    forward(w, np.zeros((2, w.crop_size, w.crop_size), np.float32))      # compile / load the kernel cache
    t0 = time.perf_counter()
    X = component_crops(A, dims, 7.0, size=w.crop_size, window_radii=w.window_radii)
    t_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    forward(w, X)
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(A, dims, 7.0, w)
    t_all = time.perf_counter() - t0
    print(f"{args.n} components: crops {args.n / t_crop:,.0f}/s, forward {args.n / t_fwd:,.0f}/s, "
          f"crops + forward (predict) {args.n / t_all:,.0f}/s")
    try:
        import torch

        from somascope.evaluation.classifier.train import from_weights

        model = from_weights(w).eval()
        with torch.no_grad():
            model(torch.from_numpy(X[:10, None]))
            t0 = time.perf_counter()
            model(torch.from_numpy(X[:, None]))
            t_torch = time.perf_counter() - t0
        print(f"PyTorch {torch.__version__} forward {args.n / t_torch:,.0f}/s (NumPy/Numba at "
              f"{t_torch / t_fwd:.2f}× its speed)")
    except ImportError:
        print("PyTorch not installed: no framework comparison")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import somascope"], check=True)
        times.append(time.perf_counter() - t0)
    base = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy"], check=True)
        base.append(time.perf_counter() - t0)
    print(f"import somascope: {min(times):.3f} s in a fresh interpreter ({min(base):.3f} s for numpy alone)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
