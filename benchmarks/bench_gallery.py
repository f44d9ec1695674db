"""How fast the gallery's images come back for a run of N images: thumbnails cold (made) and warm (cached).

Writes N emulator images (1024x1024 PNG, as fal's square_hd) to a temporary folder, then asks the
gallery's ThumbnailCache for each, twice, and prints the wall time, per-image times and the bytes a
browser downloads (thumbnails vs the full files). Usage: python benchmarks/bench_gallery.py [N] [SIDE]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.gallery.images import THUMB_SIDE, ThumbnailCache


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(count):
            path = Path(folder) / f"req{index}_0.png"
            path.write_bytes(sample_image(side + index % 7, side))  # distinct files, fal-like sizes
            paths.append(f"file://{path}")
        full_bytes = sum(os.path.getsize(p.removeprefix("file://")) for p in paths)
        cache = ThumbnailCache()
        rows = []
        for label in ("cold (read, decode, resize, encode)", "warm (cached)"):
            times = []
            started = time.perf_counter()
            for location in paths:
                one = time.perf_counter()
                thumb = cache.get(location)
                times.append(time.perf_counter() - one)
            total = time.perf_counter() - started
            rows.append((label, total, statistics.median(times), max(times), len(thumb.data)))
        thumb_bytes = sum(len(cache.get(p).data) for p in paths)
    print(
        f"bench_gallery: {count} images of {side}x{side} PNG, thumbnails {THUMB_SIDE} px JPEG, 1 thread, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print(f"{'pass':38} {'total':>8} {'p50/img':>9} {'max/img':>9}")
    for label, total, median, worst, _ in rows:
        print(f"{label:38} {total:7.2f}s {median * 1000:7.2f}ms {worst * 1000:7.2f}ms")
    print(
        f"bytes to the browser: thumbnails {thumb_bytes / 1e6:.2f} MB vs full files {full_bytes / 1e6:.2f} MB "
        f"({full_bytes / max(thumb_bytes, 1):.0f}x less); cache hits {cache.hits}, misses {cache.misses}"
    )


if __name__ == "__main__":
    main()
