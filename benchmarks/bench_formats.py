"""Seeking in big files: open a ~2 GB movie and read one frame deep inside it, per format.

    python benchmarks/bench_formats.py [--frames 4096] [--size 512] [--dir /tmp] [--formats tiff,...]

The bar (issue 17): for each format that can seek, ``open_movie(path)`` + reading frame 1,000 of
a 2 GB file takes < 0.1 s with the process under 200 MB. Formats measured: uncompressed TIFF
(one contiguous series, memory-mapped), zlib-compressed BigTIFF with one page per frame (read
page by page), raw ``.bin`` (``shape=``/``dtype=``), Scanbox ``.sbx`` (+ its ``.mat``) and a
suite2p ``plane0/data.bin`` (+ ``ops.npy``). Video codecs are measured by their own benchmark.

Each file is written under ``--dir`` (free space checked first), measured, and deleted before
the next. Each is measured in a fresh Python process with the file evicted from the page cache
(posix_fadvise): ``1st open+f1000`` is ``open_movie`` + frame 1,000 there, including the lazy
import of the format's library; then the movie is closed, the file evicted again and
``open+f1000`` is the same again — the per-file cost the bar is about — followed by frame T−1.
Also reported: the process's peak RSS (``VmHWM`` from ``/proc/self/status``, exact — psutil
has no peak on Linux and ``getrusage`` keeps the parent's peak across fork + exec) and its RSS
after importing somascope (psutil), so the reader's own cost is the difference. Every frame
read is checked (frame ``i`` carries ``i`` in its first pixel). The zlib TIFF is written at
level 1 (the level does not change how a page is found and read).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import evict, table  # noqa: E402

TARGET_FRAME = 1000
BLOCK = 128  # frames generated and written at a time

CHILD = r"""
import gc, json, os, resource, sys, time
args = json.loads(sys.argv[1])


def evict():
    for name in args["evict"]:
        fd = os.open(name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def open_and_read():
    kwargs = dict(args["kwargs"])
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    t0 = time.perf_counter()
    movie = open_movie(args["path"], **kwargs)
    frame = movie[args["target"]]
    return movie, frame, time.perf_counter() - t0


t0 = time.perf_counter()
import numpy as np
import psutil
from somascope.io import open_movie
import_rss = psutil.Process().memory_info().rss
movie, frame, first_s = open_and_read()  # fresh process: includes the format's lazy imports
ok = movie.shape[0] == args["frames"] and int(frame[0, 0]) == args["target"]
movie.close()
del movie, frame
gc.collect()
evict()
movie, frame, again_s = open_and_read()  # libraries loaded, file evicted again: the per-file cost
t0 = time.perf_counter()
last = movie[len(movie) - 1]
last_s = time.perf_counter() - t0
ok = ok and int(frame[0, 0]) == args["target"] and int(last[0, 0]) == (args["frames"] - 1) % 30000
try:  # VmHWM: this process's own peak (ru_maxrss keeps the parent's peak across fork + exec)
    with open("/proc/self/status") as f:
        peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
except OSError:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first_s": first_s, "again_s": again_s, "last_s": last_s, "ok": ok,
                  "import_rss_mb": import_rss / 2**20, "peak_rss_mb": peak_mb}))
"""


# -- data ------------------------------------------------------------------------------------
def blocks(n_frames: int, size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames ``(B, size, size)`` uint16 with some structure (a smooth background, shot noise from
    a bank of 16 noise images, so compression behaves roughly as on real data); frame ``i`` holds
    ``i % 30000`` in its first pixel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 400 + 300 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 3) ** 2))
    bank = rng.poisson(base, size=(16, size, size)).astype(np.uint16)
    for t0 in range(0, n_frames, BLOCK):
        idx = np.arange(t0, min(t0 + BLOCK, n_frames))
        block = bank[idx % 16].copy()
        block[:, 0, 0] = idx % 30000
        yield block


def frames_of(n_frames: int, size: int) -> Iterator[np.ndarray]:
    for block in blocks(n_frames, size):
        yield from block


# -- writers: each returns (path to open, open_movie kwargs, paths to delete) --------------------
def write_tiff(folder: Path, n: int, size: int) -> tuple[Path, dict[str, Any], list[Path]]:
    import tifffile

    path = folder / "movie.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(frames_of(n, size), shape=(n, size, size), dtype=np.uint16, photometric="minisblack")
    return path, {}, [path]


def write_tiff_zlib(folder: Path, n: int, size: int) -> tuple[Path, dict[str, Any], list[Path]]:
    import tifffile

    path = folder / "movie_zlib.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(frames_of(n, size), shape=(n, size, size), dtype=np.uint16, photometric="minisblack",
                 compression="zlib", compressionargs={"level": 1})
    return path, {}, [path]


def write_raw(folder: Path, n: int, size: int) -> tuple[Path, dict[str, Any], list[Path]]:
    path = folder / "movie.bin"
    with open(path, "wb") as f:
        for block in blocks(n, size):
            block.astype("<u2").tofile(f)
    return path, {"shape": [n, size, size], "dtype": "uint16"}, [path]


def write_sbx(folder: Path, n: int, size: int) -> tuple[Path, dict[str, Any], list[Path]]:
    import scipy.io

    path = folder / "mouse_000_000.sbx"
    with open(path, "wb") as f:
        for block in blocks(n, size):
            np.invert(block).astype("<u2").tofile(f)  # Scanbox stores 65535 − value
    info = {"sz": np.array([size, size], np.uint16), "channels": 2, "scanmode": 1, "resfreq": 7930.0,
            "recordsPerBuffer": size, "scanbox_version": 2}
    scipy.io.savemat(path.with_suffix(".mat"), {"info": info})
    return path, {}, [path, path.with_suffix(".mat")]


def write_suite2p(folder: Path, n: int, size: int) -> tuple[Path, dict[str, Any], list[Path]]:
    plane = folder / "suite2p" / "plane0"
    plane.mkdir(parents=True, exist_ok=True)
    with open(plane / "data.bin", "wb") as f:
        for block in blocks(n, size):
            block.astype("<i2").tofile(f)
    ops = {"Ly": size, "Lx": size, "nframes": n, "fs": 30.0, "nplanes": 1, "nchannels": 1,
           "reg_file": str(plane / "data.bin")}
    np.save(plane / "ops.npy", ops, allow_pickle=True)
    return plane / "data.bin", {}, [folder / "suite2p"]


FORMATS: dict[str, tuple[str, Callable[[Path, int, int], tuple[Path, dict[str, Any], list[Path]]]]] = {
    "tiff": ("TIFF, uncompressed", write_tiff),
    "tiff-zlib": ("BigTIFF, zlib, page per frame", write_tiff_zlib),
    "raw": ("raw .bin", write_raw),
    "sbx": ("Scanbox .sbx", write_sbx),
    "suite2p": ("suite2p data.bin", write_suite2p),
}


# -- measuring ---------------------------------------------------------------------------------
def measure_child(path: Path, kwargs: dict[str, Any], n_frames: int, files: list[Path]) -> dict[str, Any]:
    """Open ``path`` and read frame 1000 then frame T−1 in a fresh Python process (cache evicted)."""
    for p in files:
        evict(p)
    args = json.dumps({"path": str(path), "kwargs": kwargs, "target": TARGET_FRAME, "frames": n_frames,
                       "evict": [str(p) for p in files]})
    done = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_format(key: str, folder: Path, n_frames: int, size: int) -> dict[str, Any]:
    name, writer = FORMATS[key]
    path, kwargs, written = writer(folder, n_frames, size)
    try:
        files = [q for p in written for q in ([p] if p.is_file() else sorted(p.rglob("*"))) if q.is_file()]
        nbytes = sum(q.stat().st_size for q in files)
        got = measure_child(path, kwargs, n_frames, files)
    finally:
        for p in written:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    passed = got["ok"] and got["again_s"] < 0.1 and got["peak_rss_mb"] < 200
    return {
        "format": name, "file GB": nbytes / 1e9, "frames": n_frames,
        "1st open+f1000 s": got["first_s"], "open+f1000 s": got["again_s"], "f[T-1] s": got["last_s"],
        "peak RSS MB": got["peak_rss_mb"], "RSS after import MB": got["import_rss_mb"],
        "frames right": got["ok"], "bar met": passed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4096, help="frames per file (4096 × 512² uint16 = 2 GiB)")
    parser.add_argument("--size", type=int, default=512, help="frame height = width, pixels")
    parser.add_argument("--dir", default="/tmp", help="where the files are written (one at a time)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {list(FORMATS)}")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.formats.split(",") if k.strip()]
    unknown = set(keys) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {list(FORMATS)}")
    if args.frames <= TARGET_FRAME:
        parser.error(f"--frames must exceed {TARGET_FRAME}")
    need = args.frames * args.size**2 * 2
    free = shutil.disk_usage(args.dir).free
    if free < 1.5 * need:
        print(f"{args.dir}: {free / 1e9:.1f} GB free, need about {1.5 * need / 1e9:.1f} GB; use --dir or --frames",
              file=sys.stderr)
        return 1
    print(f"{args.frames} frames of {args.size}×{args.size} uint16 per file ({need / 2**30:.2f} GiB of pixels), "
          f"written under {args.dir} ({free / 1e9:.0f} GB free)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="somascope-bench-formats-") as tmp:
        for key in keys:
            print(f"  {FORMATS[key][0]} …", flush=True)
            rows.append(run_format(key, Path(tmp), args.frames, args.size))
    print()
    print(table(rows, list(rows[0])))
    print("\n1st open+f1000: a fresh process, page cache evicted, including the format's lazy imports "
          "(scipy.io for .sbx);\nopen+f1000: the same file opened again in that process after evicting it "
          "again (the per-file cost; the bar is judged on it);\nf[T-1]: then the last frame. "
          "Bar: open+f1000 < 0.1 s and peak RSS < 200 MB.")
    return 0 if all(r["bar met"] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
