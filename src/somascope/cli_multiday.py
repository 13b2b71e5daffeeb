"""``somascope register RUN1 RUN2 … --out DIR``: the same cells across sessions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("somascope")

__all__ = ["add_register_command", "cmd_register"]


def cmd_register(args: argparse.Namespace) -> int:
    """Register the sessions, extract the union traces where the run folders allow, write outputs."""
    from .multiday import as_session, register_multi
    from .multiday.output import write_all

    if len(args.runs) < 2:
        raise ValueError("register needs at least two sessions (run folders or results files).")
    sessions = [as_session(p, accepted_only=not args.all_components, which=args.template,
                           name=_label(p, i, args.runs)) for i, p in enumerate(args.runs)]
    multi = register_multi(sessions, thresh_cost=args.thresh_cost, max_dist=args.max_dist or None)
    if not args.no_traces:
        from .multiday.traces import deconvolve_union, union_traces

        multi.traces = union_traces(multi, sessions)
        multi.denoised, multi.spikes = deconvolve_union(multi.traces, sessions)
    files = write_all(multi, args.out, [str(p) for p in args.runs])
    counts = multi.n_sessions_per_cell
    print(f"{multi.n_union} cells over {len(sessions)} sessions ({int((counts == len(sessions)).sum())} in all)")
    for row in multi.pair_counts():
        print(f"  {row['a']} × {row['b']}: {row['matched']} in both ({row['n_a']} / {row['n_b']} cells)")
    for path in files.values():
        print(f"wrote {path}")
    return 0


def _label(path: Path, i: int, all_paths: Any) -> str:
    """A session name: the folder (or file stem) name, made unique with the position."""
    p = Path(path)
    name = p.name if p.is_dir() else (p.parent.name if p.stem == "results" else p.stem)
    names = [Path(q).name for q in all_paths]
    return name if names.count(Path(path).name) == 1 and name else f"s{i}_{name}"


def add_register_command(sub: Any) -> None:
    """Add ``somascope register`` to the subcommands ``sub``."""
    p = sub.add_parser("register", help="the same cells across sessions (multi-day registration)",
                       description="Register the components of several sessions of one field of view: align "
                                   "each session's mean image to the first's (rigid + optical flow), match "
                                   "footprints (Jaccard, Hungarian), build the union of cells, and re-extract "
                                   "every union cell's trace in every session from the run folders' movies. "
                                   "Writes assignments.csv, register.h5 and report.html. Guide: docs/multiday.md.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="folders of 'somascope run' (or results .h5 files: no traces); the first is the reference")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--all-components", action="store_true", help="register every component, not only accepted")
    p.add_argument("--thresh-cost", type=float, default=0.7,
                   help="pairs with a Jaccard distance at or above this never match (default 0.7)")
    p.add_argument("--max-dist", type=float, default=None,
                   help="pairs whose centroids are farther apart (px, after alignment) never match (default: no cap)")
    p.add_argument("--template", choices=["mean", "corr", "max"], default="mean",
                   help="summary image the fields are aligned on (default mean)")
    p.add_argument("--no-traces", action="store_true", help="skip the re-extraction of traces")
    p.set_defaults(func=cmd_register)
