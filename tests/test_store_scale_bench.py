"""``bench/store_scale.py`` end to end at a tiny scale (the 18 GB run is a benchmark, not a test): it writes the
store, measures every figure — reading against the disk, memory of fresh loader and training processes, step time
from disk and over a real loopback server — and removes its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_store_bench_measures_every_figure_and_cleans_up(tmp_path):
    root, out = tmp_path / "bench", tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store_scale.py"), "--scale", "0.001", "--regions", "4", "--dim", "64",
         "--shard-size", "100", "--root", str(root), "--read-gb", "0.01", "--loader-batches", "2", "--warmup", "2",
         "--slice", "2", "--steps", "2", "--rounds", "1", "--archs", "lxmert-mini:8", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images"] == 256 and figures["bytes"] > 256 * 4 * 64 * 2  # float16 features and more
    assert 0 < figures["open_s"] < 2 and figures["disk_mbps"] > 0
    assert set(figures["loader"]) == {"0", "0-prefetch", "1", "1-prefetch", "2", "2-prefetch"}
    assert all(v["samples_per_s"] > 0 for v in figures["loader"].values())
    assert 0 < figures["loader_pss_mb"] < 4000 and len(figures["loader_pss_samples"][-1]) == 3  # process + 2 workers
    assert figures["train_pss_mb"] and all(x > 0 for x in figures["train_pss_mb"])
    steps = figures["steps"]["lxmert-mini"]
    assert all(steps[k] > 0 for k in ("memory", "disk", "http"))
    assert "open:" in done.stdout and "over HTTP" in done.stdout
    assert not root.exists()  # the store is removed
