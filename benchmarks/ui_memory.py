"""Memory of the web app over consecutive edits, through the real page.

Serves ``aledit ui`` (synthetic-tiny) in this process, drives it with Playwright and Debian's
Chromium: generates a scene, finds its masks, then presses "Edit" N times (each press runs the
chosen methods once) and records the server process's resident memory after every edit::

    python benchmarks/ui_memory.py --edits 20 --methods ale [--steps 20] [--out ui_memory.csv]

Prints a Markdown table (RSS after the first edit, after the last, the largest, and the growth
per edit fitted over the second half) and writes one CSV row per edit. Needs the ``ui`` extra
and a Chromium binary.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import shutil
import socket
import sys
import time

import numpy as np


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--methods", default="ale", help="comma-separated choices ticked in the page")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="CSV of edit, seconds, RSS MiB, Python-heap MiB")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (numpy included)")
    args = parser.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    from aledit.ui import launch

    torch.set_num_threads(1)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium found: apt-get install -y chromium")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()

    def traced_mib() -> float:
        return tracemalloc.get_traced_memory()[0] / 2**20 if args.tracemalloc else float("nan")

    start_rss = rss_mib()
    blocks = launch(port=port, block=False)
    loaded_rss = rss_mib()
    wanted = set(args.methods.split(","))
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#edit-0 textarea').value.includes('->')")
            page.click("#find-masks")
            page.wait_for_timeout(500)
            page.wait_for_function("!document.body.innerText.includes('processing |')")
            page.fill("#steps input", str(args.steps))
            boxes, labels = page.locator("#methods input[type=checkbox]"), page.locator("#methods label")
            for i in range(boxes.count()):
                if boxes.nth(i).is_checked() != (labels.nth(i).inner_text().strip() in wanted):
                    labels.nth(i).click()
            for n in range(1, args.edits + 1):
                page.fill("#seed input", str(n))  # a different edit each time
                t0 = time.perf_counter()
                page.click("#run")
                page.locator("#status").filter(has_text=f"Done (seed {n})").wait_for()
                page.wait_for_function("!document.body.innerText.includes('processing |')")
                seconds = time.perf_counter() - t0
                gc.collect()
                rows.append((n, seconds, rss_mib(), traced_mib()))
                print(f"edit {n:2d}: {seconds:5.1f} s, RSS {rows[-1][2]:7.1f} MiB, Python heap {rows[-1][3]:6.1f} MiB", flush=True)
            browser.close()
    finally:
        blocks.close()
    rss = np.array([r[2] for r in rows])
    half = len(rss) // 2
    slope = np.polyfit(np.arange(half, len(rss)), rss[half:], 1)[0] if len(rss) - half >= 2 else float("nan")
    print()
    print(f"methods {args.methods}, {args.steps} steps, 64x64 synthetic scene, {len(rows)} edits")
    print("| before loading | after loading | after edit 1 | after last edit | largest | growth per edit (2nd half) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {start_rss:.0f} MiB | {loaded_rss:.0f} MiB | {rss[0]:.0f} MiB | {rss[-1]:.0f} MiB | {rss.max():.0f} MiB "
        f"| {slope:+.2f} MiB |"
    )
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["edit", "seconds", "rss_mib", "python_heap_mib"])
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
