"""Video reader: opening a ~2 GB AVI and reading one frame in the middle and one near the end.

    python benchmarks/bench_formats_video.py [--frames 8000] [--size 512] [--dir /tmp]
                                             [--codecs rawvideo,ffv1,ffv1-g12,mjpeg,h264] [--keep]

Writes the same ``frames`` × ``size``² uint8 frames (a smooth, noisy, changing image with the
frame number stamped in 16×16-pixel bit blocks) as AVIs in rawvideo (≈2.1 GB at the defaults),
FFV1 intra (``g=1``), FFV1 with FFmpeg's default GOP of 12 (what the Miniscope V4 software
writes), MJPEG, and H.264 in MP4 (libx264, GOP 250) when PyAV can encode it, into a temporary
folder (checked for free space first, deleted at the end unless ``--keep``). For each file a fresh
subprocess imports somascope, opens the movie (``open_movie``), reads frame 1000 and frame
``frames - 10``, checks their stamps and reports the seconds of each step and its peak RSS
(``VmHWM``, the peak resident set of the child's own process image, the whole interpreter with
numpy, somascope and PyAV included; psutil's RSS at the end is shown too). Each file is read cold (page cache evicted with ``posix_fadvise``) and then warm.
The bar for seekable (intra-frame) codecs: open + frame 1000 < 0.1 s and < 200 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import evict, table  # noqa: E402

BLOCK = 16  # stamp bit blocks, px
BITS = 16  # frame numbers up to 65535

CODECS = {  # name: (file suffix, codec, pixel format, codec options, gop)
    "rawvideo": (".avi", "rawvideo", "gray", {}, None),
    "ffv1": (".avi", "ffv1", "gray", {}, 1),
    "ffv1-g12": (".avi", "ffv1", "gray", {}, 12),
    "mjpeg": (".avi", "mjpeg", "yuvj420p", {"q:v": "3"}, None),
    "h264": (".mp4", "libx264", "yuv420p", {"preset": "ultrafast", "crf": "18"}, 250),
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import psutil
from somascope.io import open_movie
import av  # noqa: F401  (imported by the first read anyway; timed with the imports)
t1 = time.perf_counter()
movie = open_movie(sys.argv[1])
t2 = time.perf_counter()
a = movie[1000]
t3 = time.perf_counter()
end = len(movie) - 10
b = movie[end]
t4 = time.perf_counter()
def stamp(frame):
    bits = frame[:16, :16 * 16].reshape(16, 16, 16).mean(axis=(0, 2)) > 127
    return int(sum(int(v) << i for i, v in enumerate(bits)))
def peak_mb():  # VmHWM: this process image's peak (ru_maxrss would count the parent's before exec)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"frames": len(movie), "import_s": t1 - t0, "open_s": t2 - t1, "frame1000_s": t3 - t2,
                  "frame_end_s": t4 - t3, "stamp1000": stamp(a), "stamp_end": stamp(b), "end": end,
                  "peak_rss_mb": peak_mb(), "rss_mb": psutil.Process().memory_info().rss / 2**20}))
"""


def frames_source(n_frames: int, size: int, seed: int = 0):
    """Frame ``k`` (uint8 ``size``×``size``): a smooth background that drifts, a few blobs that
    flicker, noise, and the frame number as 16 bit blocks along the top edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = 60 + 40 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.2)
    centres = rng.random((20, 2)).astype(np.float32)
    blobs = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.0008) for cy, cx in centres])
    noise = rng.normal(0, 4, (16, size, size)).astype(np.float32)
    for k in range(n_frames):
        activity = 60 * (np.sin(0.05 * k + np.arange(20)) > 0.7)
        frame = background + np.tensordot(activity.astype(np.float32), blobs, 1) + noise[k % 16]
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        for i in range(BITS):
            frame[:BLOCK, i * BLOCK:(i + 1) * BLOCK] = 255 if (k >> i) & 1 else 0
        yield frame


def write(path: Path, codec_name: str, n_frames: int, size: int) -> float:
    import av

    _, codec, pix_fmt, options, gop = CODECS[codec_name]
    t0 = time.perf_counter()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30, options=dict(options))
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in frames_source(n_frames, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - t0


def can_encode(codec: str) -> bool:
    import av

    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def measure_child(path: Path, cold: bool) -> dict[str, object]:
    if cold:
        evict(path)
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    codecs = [c for c in args.codecs.split(",") if c]
    need = args.frames * args.size**2 * 1.6  # rawvideo plus the compressed ones, generously
    free = shutil.disk_usage(args.dir).free
    if free < need + 2e9:
        print(f"{args.dir}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB (+2 GB margin) needed; "
              "pass --dir or fewer --frames")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="somascope-bench-video-", dir=args.dir))
    rows = []
    try:
        for name in codecs:
            codec = CODECS[name][1]
            if not can_encode(codec):
                rows.append({"codec": name, "note": f"PyAV cannot encode {codec} here"})
                continue
            path = folder / f"{name}{CODECS[name][0]}"
            write_s = write(path, name, args.frames, args.size)
            for cold in (True, False):
                res = measure_child(path, cold)
                row = {"codec": name, "file_gb": path.stat().st_size / 1e9, "write_s": write_s,
                       "cache": "cold" if cold else "warm"}
                if "error" in res:
                    row["note"] = res["error"]
                else:
                    ok = res["stamp1000"] == 1000 and res["stamp_end"] == res["end"] and res["frames"] == args.frames
                    row.update(frames=res["frames"], import_s=res["import_s"], open_s=res["open_s"],
                               frame1000_s=res["frame1000_s"], open_plus_1000_s=res["open_s"] + res["frame1000_s"],
                               frame_end_s=res["frame_end_s"], peak_rss_mb=res["peak_rss_mb"],
                               rss_mb=res["rss_mb"], right_frames="yes" if ok else "NO")
                rows.append(row)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.frames} frames of {args.size}×{args.size} uint8, 30 Hz; folder {folder}"
          + (" (kept)" if args.keep else " (deleted)"))
    print(table(rows, ["codec", "file_gb", "write_s", "cache", "frames", "import_s", "open_s", "frame1000_s",
                       "open_plus_1000_s", "frame_end_s", "peak_rss_mb", "rss_mb", "right_frames", "note"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
