"""Score a ``somascope run`` folder against a ``gt.npz`` ground truth in the ``dev_sim`` layout
(2-D, or a volume of the hard family: ``A`` (N, Z, H, W), matched in 3-D).

The rule is the one in ``../shared/data/dev_sim/README.md``: footprints binarised at 0.2 × their
max, largest connected piece, Jaccard distance, Hungarian assignment, pairs with distance > 0.7
unmatched; targets are the active somata (``is_soma & is_active``); precision over the
*accepted* components. The run's frame is aligned to the truth's motion-free mean image
(``mean_clean``) by one sub-pixel offset before matching.

    .venv/bin/python benchmarks/score_gt.py RUN_DIR GT.npz      # prints one line of figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SNR_BINS = ((0.0, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, np.inf))


def score_estimates(est: Any, mean_image: np.ndarray, gt: Any) -> dict[str, Any]:
    """:func:`score_footprints` of an ``Estimates`` (its accepted components scored)."""
    acc = est.accepted_indices
    return score_footprints(est.A, acc, mean_image, gt, C=est.C)


def score_footprints(A: Any, accepted: np.ndarray, mean_image: np.ndarray, gt: Any,
                     C: np.ndarray | None = None) -> dict[str, Any]:
    """Figures of footprints ``A`` (``pixels × K``; columns ``accepted`` are the tool's cells)
    against ``gt`` (a mapping with ``A`` (N, H, W) or, for a volume, (N, Z, H, W), ``C``,
    ``is_soma``, ``is_active``, ``snr``, ``mean_clean``); ``mean_image`` is the tool's mean image
    (``(H, W)``, a volume's ``(Z, H, W)``), which fixes its frame's in-plane offset (a volume's
    from the planes' average; the hard volume has no z motion). Footprints are matched in 3-D
    for a volume (:func:`somascope.metrics.match_footprints` with ``dims`` (Z, H, W)).

    Returns ``f1``, ``precision``, ``recall``, ``n_true``, ``n_est``, ``f1_snr4``,
    ``f1_snr8`` (targets restricted to ``snr`` > 4 / > 8, precision unchanged), ``recall_by_snr``
    (one recall per ``SNR_BINS`` bin, NaN where empty), ``trace_r`` (median Pearson r of matched
    traces ``C``, ``K × T``; NaN without them), ``recall_all`` (every component, before the
    tool's own selection) and ``offset`` (px).
    """
    from somascope.evaluation.classifier import frame_offset
    from somascope.metrics import match_footprints, shift_footprints, trace_correlation

    A_gt = np.asarray(gt["A"], np.float32)
    dims = tuple(int(d) for d in A_gt.shape[1:])
    target = np.flatnonzero(np.asarray(gt["is_soma"], bool) & np.asarray(gt["is_active"], bool))
    snr = np.asarray(gt["snr"], float)[target]
    truth_mean = np.asarray(gt["mean_clean"], np.float32)
    image = np.asarray(mean_image, np.float32)
    if len(dims) == 3:  # a volume moves in-plane only: one (dy, dx) from the planes' average
        truth_mean = truth_mean.mean(axis=0)
        image = image.reshape(-1, *image.shape[-2:]).mean(axis=0)
    offset = frame_offset(image, truth_mean)
    A_true = _shift_in_plane(A_gt[target].reshape(target.size, -1).T, dims, offset, shift_footprints)
    rule = dict(binarise_frac=0.2, largest_piece=True)
    acc = np.asarray(accepted, np.int64)
    m = match_footprints(A_true, A[:, acc], dims, **rule)
    m_all = match_footprints(A_true, A, dims, **rule)
    hit = np.zeros(target.size, bool)
    hit[m.ref_idx] = True
    out: dict[str, Any] = {"f1": m.f1, "precision": m.precision, "recall": m.recall, "n_true": m.n_ref,
                           "n_est": m.n_est, "n_all": A.shape[1], "recall_all": m_all.recall,
                           "offset": np.round(offset, 2).tolist()}
    for lo in (4, 8):
        sel = snr > lo
        tp = int(hit[sel].sum())
        r = tp / max(int(sel.sum()), 1)
        p = m.precision
        out[f"f1_snr{lo}"] = 2 * p * r / (p + r) if p + r else 0.0
    out["recall_by_snr"] = [float(hit[(snr >= a) & (snr < b)].mean()) if ((snr >= a) & (snr < b)).any()
                            else float("nan") for a, b in SNR_BINS]
    out["trace_r"] = float("nan")
    if m.tp and C is not None:
        r = trace_correlation(np.asarray(gt["C"], float)[target], np.asarray(C, float)[acc], m)
        out["trace_r"] = float(np.median(r))
    return out


def score_structural(est: Any, mean_image: np.ndarray, gt: Any) -> dict[str, Any]:
    """Figures of a run seeded from a structural channel (``est.silent`` set; or an unseeded
    run, whose accepted components all count as active) against a two-channel ground truth
    (``labelled``): ``active`` (:func:`score_footprints` of the accepted, not silent, components
    against the active somata), ``recall_labelled`` (of the labelled active somata, by those
    components; ``found_labelled`` the same by all accepted components, silent flag aside), and
    the silent flags: ``silent_precision`` (flagged silent components matching a
    labelled silent soma, over all flagged) and ``silent_recall`` (labelled silent somata matched
    by a flagged component), ``n_silent_true``, ``n_silent_flagged``."""
    from somascope.evaluation.classifier import frame_offset
    from somascope.metrics import match_footprints

    acc = est.accepted_indices
    silent = np.zeros(est.K, bool) if est.silent is None else np.asarray(est.silent, bool)
    active = acc[~silent[acc]]
    flagged = acc[silent[acc]]
    out = {"active": score_footprints(est.A, active, mean_image, gt, C=est.C)}
    A_gt = np.asarray(gt["A"], np.float32)
    dims = tuple(int(d) for d in A_gt.shape[1:])
    soma, on, lab = (np.asarray(gt[k], bool) for k in ("is_soma", "is_active", "labelled"))
    truth_mean, image = np.asarray(gt["mean_clean"], np.float32), np.asarray(mean_image, np.float32)
    if len(dims) == 3:
        truth_mean, image = truth_mean.mean(axis=0), image.reshape(-1, *image.shape[-2:]).mean(axis=0)
    offset = frame_offset(image, truth_mean)
    rule = dict(binarise_frac=0.2, largest_piece=True)
    from somascope.metrics import shift_footprints

    def truth(sel: np.ndarray) -> Any:
        idx = np.flatnonzero(sel)
        return _shift_in_plane(A_gt[idx].reshape(idx.size, -1).T, dims, offset, shift_footprints)

    m = match_footprints(truth(soma & on & lab), est.A[:, active], dims, **rule)
    out["recall_labelled"] = m.recall
    # found at all, flag aside: a dim active cell flagged silent is found but misflagged
    out["found_labelled"] = match_footprints(truth(soma & on & lab), est.A[:, acc], dims, **rule).recall
    n_true = int((soma & ~on & lab).sum())
    out.update(n_silent_true=n_true, n_silent_flagged=int(flagged.size))
    if n_true and flagged.size:
        ms = match_footprints(truth(soma & ~on & lab), est.A[:, flagged], dims, **rule)
        out.update(silent_precision=ms.precision, silent_recall=ms.recall)
    else:
        out.update(silent_precision=float("nan") if not flagged.size else 0.0,
                   silent_recall=float("nan") if not n_true else 0.0)
    return out


def _shift_in_plane(A: Any, dims: tuple[int, ...], offset: np.ndarray, shift_footprints: Any) -> Any:
    """Footprints ``A`` (``pixels × K``, C order of ``dims`` (H, W) or (Z, H, W)) moved by the
    in-plane ``offset`` (dy, dx) px, every plane of a volume alike."""
    if len(dims) == 2:
        return shift_footprints(A, dims, offset)
    from scipy import sparse

    A = sparse.csr_matrix(A)
    plane = dims[1] * dims[2]
    return sparse.vstack([shift_footprints(A[z * plane:(z + 1) * plane], dims[1:], offset)
                          for z in range(dims[0])]).tocsc()


def score_run(run_dir: str | Path, gt_path: str | Path) -> dict[str, Any]:
    """:func:`score_estimates` of a ``somascope run`` folder's ``results.h5``."""
    from somascope.pipeline import load_results

    res = load_results(Path(run_dir) / "results.h5")
    mean = res.summary.get("mean")
    if mean is None:
        mean = res.motion["mean_image"]
    return score_estimates(res.estimates, mean, np.load(gt_path, allow_pickle=True))


def format_scores(s: dict[str, Any]) -> str:
    """One line: F1, P, R, F1 at SNR > 4 / > 8, recall by SNR bin, trace r."""
    bins = " ".join("-" if np.isnan(v) else f"{v:.2f}" for v in s["recall_by_snr"])
    return (f"F1 {s['f1']:.3f}  P {s['precision']:.3f}  R {s['recall']:.3f}  "
            f"F1>4 {s['f1_snr4']:.3f}  F1>8 {s['f1_snr8']:.3f}  n {s['n_est']}/{s['n_all']} "
            f"(true {s['n_true']})  R(all) {s['recall_all']:.2f}  R by SNR [{bins}]  r {s['trace_r']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("gt")
    args = ap.parse_args(argv)
    print(format_scores(score_run(args.run_dir, args.gt)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
