"""Store layouts measured: write from 2 processes, read all frames, read one patch over all frames.

    python benchmarks/bench_store.py [--frames 3000] [--size 512] [--dir /tmp/somascope-bench]

Compares the somascope default (Zarr bricks of 128 frames × 64×64 pixels) with other Zarr
chunkings and with a flat C-order memory-mapped file, reading from disk (page cache evicted
before each read) and from a warm cache. Prints one table; ratios are against reading the
whole movie with the same layout in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import evict, measure, table  # noqa: E402

from somascope.io import iter_chunks  # noqa: E402
from somascope.parallel import Engine  # noqa: E402
from somascope.store import Store  # noqa: E402

PATCH = 64


def _block(t0: int, t1: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(t0)
    return rng.random((t1 - t0, size, size), dtype=np.float32)


def _write_zarr_block(args: tuple[str, int, int, int]) -> int:
    path, t0, t1, size = args
    Store.open(path, mode="r+").write(t0, _block(t0, t1, size))
    return t1 - t0


def _write_mmap_block(args: tuple[str, int, int, int]) -> int:
    path, t0, t1, size = args
    mm = np.load(path, mmap_mode="r+")
    mm[t0:t1] = _block(t0, t1, size)
    mm.flush()
    return t1 - t0


def run_layout(name: str, chunks: tuple[int, int, int] | None, n_frames: int, size: int, folder: Path,
               engine: Engine) -> dict[str, object]:
    shape = (n_frames, size, size)
    if chunks is None:  # flat memory map, C order (T, H, W)
        path = folder / "flat.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        blocks = [(str(path), t0, min(t0 + 128, n_frames), size) for t0 in range(0, n_frames, 128)]
        with measure() as w:
            engine.map(_write_mmap_block, blocks, progress=False)
        source = np.load(path, mmap_mode="r")
    else:
        path = folder / f"{name}.zarr"
        store = Store.create(path, shape, chunks=chunks)
        step = chunks[0] * max(1, 128 // chunks[0])
        blocks = [(str(store.path), t0, min(t0 + step, n_frames), size) for t0 in range(0, n_frames, step)]
        with measure() as w:
            engine.map(_write_zarr_block, blocks, progress=False)
            source = store.finalize()
    rows, cols = slice(size // 2 - PATCH, size // 2), slice(size // 2 - PATCH, size // 2)

    def read_all() -> float:
        total = 0.0
        for _, frames in iter_chunks(source, 128):
            total += float(frames[0, 0, 0])
        return total

    def read_patch() -> np.ndarray:
        if isinstance(source, Store):
            return source.read_patch(rows, cols)
        return np.array(source[:, rows, cols])

    evict(path)
    with measure() as full:
        read_all()
    evict(path)
    with measure() as patch:
        got = read_patch()
    with measure() as warm:
        read_patch()
    expect = np.concatenate([_block(t0, min(t0 + 128, n_frames), size)[:, rows, cols]
                             for t0 in range(0, n_frames, 128)]) if chunks is None else None
    if expect is not None:
        assert np.array_equal(got, expect)
    gb = 4 * n_frames * size * size / 2**30
    result = {
        "layout": name,
        "chunks": "flat" if chunks is None else "×".join(map(str, chunks)),
        "write_s": w["seconds"],
        "write_GBps": gb / w["seconds"],
        "read_all_s": full["seconds"],
        "read_patch_s": patch["seconds"],
        "patch/all": patch["seconds"] / full["seconds"],
        "patch_warm_s": warm["seconds"],
        "peak_read_GB": max(full["peak_gb"], patch["peak_gb"]),
    }
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="somascope-bench-", dir=args.dir))
    layouts = [
        ("bricks64 (default)", (128, 64, 64)),
        ("bricks128", (32, 128, 128)),
        ("bricks32", (512, 32, 32)),
        ("frame-major zarr", (8, args.size, args.size)),
        ("flat memmap", None),
    ]
    results = []
    try:
        with Engine("local", n_workers=2) as engine:
            for name, chunks in layouts:
                results.append(run_layout(name, chunks, args.frames, args.size, folder, engine))
                print(f"done {name}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    gb = 4 * args.frames * args.size**2 / 2**30
    print(f"\nStore layouts, {args.frames}×{args.size}×{args.size} float32 ({gb:.2f} GiB), "
          f"write from 2 processes, reads cold (page cache evicted) unless 'warm'; patch {PATCH}×{PATCH}\n")
    print(table(results, ["layout", "chunks", "write_s", "write_GBps", "read_all_s", "read_patch_s",
                          "patch/all", "patch_warm_s", "peak_read_GB"]))


if __name__ == "__main__":
    main()
