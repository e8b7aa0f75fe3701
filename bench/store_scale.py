"""A feature store of VQA v2's size: write it, open it, read it, train from it — on disk and over HTTP.

Writes a synthetic store of the real shape (COCO's 123,287 images x 36 regions x 2,048-d float16, about 18 GB; every
sample distinct) with the store's own writer, then measures, in one run (ratios are what to compare; these machines
are noisy — run it on a quiet machine):

1. write throughput (MB/s, checksums and sha256 included) and the time to open the store (manifest + index);
2. the disk's own sequential read speed (MB/s, pages evicted first) beside the loader's random-order reads — samples/s
   and MB/s with 0, 1 and 2 DataLoader workers, the training plan's order, pages evicted first; target >= 70% of the
   disk's speed. ``fincore`` says how much of the store the page cache held before and after;
3. memory: PSS (``/proc/PID/smaps_rollup``; RSS counts pages shared with forked workers twice) of a loader-only
   process with 2 workers, and of a training rank (lxmert-mini) with 2 workers sampled over a long slice of an epoch
   after a warm-up (``--warmup`` steps, sampled too) —
   targets: the loader <= 1.5 GB, the training rank flat (growth <= 5% from the first sample to the last);
4. the step time with the real loader against the same batches already in memory, lxmert-mini and lxmert-base, from
   local disk and over a loopback HTTP server (``vlm features serve``) — targets >= 0.95 (disk) and >= 0.90 (HTTP).

Beside it, the peer's design (airsplay/lxmert loads every feature into RAM): the bytes that design holds per process.

    python bench/store_scale.py                       # the real size (~18 GB in a temporary folder, removed after)
    python bench/store_scale.py --scale 0.01 --steps 3 --slice 20    # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlm  # noqa: E402
from features.store import FeatureStore, ShardWriter, finalize_store  # noqa: E402
from features.store.format import FORMAT_VERSION  # noqa: E402
from pretraining.data import PretrainData  # noqa: E402
from pretraining.objectives import build_objectives  # noqa: E402
from pretraining.task import PretrainTask  # noqa: E402
from vlm.config import TrainConfig  # noqa: E402
from vlm.data.texts import TextExample  # noqa: E402
from vlm.engine.loader import EpochPlan, epoch_loader  # noqa: E402
from vlm.engine.run import RunContext  # noqa: E402
from vlm.engine.trainer import Trainer  # noqa: E402

COCO_IMAGES = 123_287
MB = 1e6


# ------------------------------------------------------------------------------------------------------ the store


def write_store(out: Path, n: int, k: int, d: int, shard_size: int) -> tuple[float, int]:
    """A store of ``n`` synthetic images written by the store's writer: ``(seconds, bytes)``.

    The features come from a pool of 64 random arrays, each sample made distinct by its first row (its index), so
    that writing measures the store and not the random number generator.
    """
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((64, k, d)).astype(np.float16)
    boxes = np.sort(rng.random((k, 4)).astype(np.float32).reshape(k, 2, 2), axis=1).reshape(k, 4)
    out.mkdir(parents=True)
    start = time.perf_counter()
    shards = (n + shard_size - 1) // shard_size
    for s in range(shards):
        writer = ShardWriter(out, s)
        for i in range(s * shard_size, min(n, (s + 1) * shard_size)):
            feats = pool[i % 64].copy()
            feats[0, 0] = (i % 1000) / 100
            writer.write(f"COCO_train2014_{i:012d}", feats, boxes, {"width": 640, "height": 480})
        writer.commit()
    finalize_store(out, {"format": "vlm-features", "version": FORMAT_VERSION, "backend": "synthetic",
                         "settings": {"k": k, "d": d}, "weights": {}, "random_weights": True, "feature_dim": d,
                         "num_regions": k, "shard_size": shard_size, "num_shards": shards})
    seconds = time.perf_counter() - start
    return seconds, sum(p.stat().st_size for p in out.glob("shard-*.tar"))


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages; no root needed)."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_bytes(paths: list[Path]) -> int | None:
    """Bytes of the files held by the page cache (``fincore``), or None where it is not installed."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, paths)],
                         capture_output=True, text=True)
    return sum(int(x) for x in out.stdout.split()) if out.returncode == 0 else None


def disk_read_mbps(paths: list[Path], limit: int) -> float:
    """Sequential read speed of the shards (8 MB reads, pages evicted first), up to ``limit`` bytes."""
    evict(paths)
    done, start = 0, time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                done += len(chunk)
        if done >= limit:
            break
    return done / (time.perf_counter() - start) / MB


class _Samples(torch.utils.data.Dataset):
    """The store's samples in the training plan's order, in batches of 64 (what a rank's loader reads)."""

    def __init__(self, store: FeatureStore, ids: list[str], plan: EpochPlan, prefetch: bool) -> None:
        self.store, self.ids, self.plan, self.prefetch = store, ids, plan, prefetch

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def __getitem__(self, position: int) -> int:
        batch = [self.ids[i] for i in self.plan.indices(0, position)]
        if self.prefetch:  # as the batch builders do
            self.store.prefetch(batch)
        return sum(self.store[i]["feats"].nbytes for i in batch)


def loader_rate(store: FeatureStore, ids: list[str], workers: int, batches: int, sample_bytes: float,
                prefetch: bool = True, seed: int = 0) -> tuple[float, float]:
    """``(samples/s, MB/s of store bytes)`` of ``batches`` batches read in the plan's order by ``workers`` workers."""
    plan = EpochPlan(len(ids), 64, seed=seed)  # another order each time: nothing left in the cache helps
    loader = torch.utils.data.DataLoader(_Samples(store, ids, plan, prefetch), batch_size=None, sampler=range(batches),
                                         num_workers=workers, prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    n = sum(1 for _ in loader) * 64
    seconds = time.perf_counter() - start
    return n / seconds, n * sample_bytes / seconds / MB


# ----------------------------------------------------------------------------------------------------- memory


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def family_pss(pid: int | None = None) -> list[float]:
    """PSS of a process and of its children (the DataLoader workers), MB each: ``[process, child, ...]``."""
    me = pid or os.getpid()
    kids = [int(c) for t in Path(f"/proc/{me}/task").iterdir()
            for c in (t / "children").read_text().split()]
    out = [pss_mb(me)]
    for k in kids:
        try:
            out.append(pss_mb(k))
        except OSError:
            pass
    return out


def family_pss_mb() -> float:
    """PSS of this process and its children (the DataLoader workers), MB."""
    return sum(family_pss())


def loader_only(store_dir: Path, batches: int) -> None:
    """``--loader-only``: a fresh process that builds the training data and reads ``batches`` batches of 64 through
    2 workers, printing its PSS and its workers' (sampled every 10 batches after the first 10) as JSON."""
    store = FeatureStore(store_dir)
    data = make_data(store, list(store.ids()), vlm.load_tokenizer())
    plan = EpochPlan(len(data), 64, seed=0)
    samples = []
    stop = min(batches, plan.batches_per_epoch)
    for n, _ in enumerate(epoch_loader(data, plan, 0, num_workers=2, stop=stop)):
        if (n >= 10 and n % 10 == 0) or n == stop - 1:  # and at the last batch (a small store has few)
            samples.append(family_pss())
    print(json.dumps(samples))


def loader_only_pss(store_dir: Path, batches: int) -> list[list[float]]:
    out = subprocess.run([sys.executable, __file__, "--loader-only", str(store_dir), "--loader-batches", str(batches)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- training


def make_data(store: FeatureStore, ids: list[str], tok) -> PretrainData:
    texts = [TextExample(i, f"a photo with {n % 7 + 1} objects, number {n}") for n, i in enumerate(ids)]
    return PretrainData(texts, store, tok, None, seed=0)


def make_trainer(arch: str, data: PretrainData, batch: int, root: Path) -> Trainer:
    torch.manual_seed(0)
    model = vlm.create_model(arch, task="pretraining", visual_feat_dim=data.store.feature_dim, num_answers=0,
                             visual_obj_loss=False, visual_attr_loss=False, text_init=None)
    task = PretrainTask(model, build_objectives({"mlm": 1, "region_feat": 1, "matching": 1}))
    cfg = TrainConfig(batch_size=batch, max_steps=10**6, log_every=10**6, num_workers=2)
    run = RunContext(run_dir=root / "run", device=torch.device("cpu"), seed=0)  # train_step only: no files
    return Trainer(task, data, cfg, save_model=model, run=run, show_progress=False)


def steps_per_s(trainer: Trainer, data: PretrainData, steps: int, epoch: int, memory: list | None) -> float:
    if memory is not None:
        start = time.perf_counter()
        for b in memory:
            trainer.train_step([b])
        return len(memory) / (time.perf_counter() - start)
    plan = EpochPlan(len(data), trainer.cfg.batch_size, seed=0)
    loader = epoch_loader(data, plan, epoch, start=0, stop=steps + 2, num_workers=2)
    it = iter(loader)
    trainer.train_step([next(it)])  # the workers' start-up is not a step
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step([next(it)])
    rate = steps / (time.perf_counter() - start)
    del it
    return rate


def serve(directory: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "features.cli", "features", "serve", str(directory), "--port", "0"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    line = proc.stdout.readline()
    return proc, line.split(" at ")[1].split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's 123,287 images (default 1)")
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--root", default=None, help="folder for the store (default: a temporary folder in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the store (default: removed at the end)")
    ap.add_argument("--read-gb", type=float, default=4.0, help="GB read for the disk's sequential speed")
    ap.add_argument("--loader-batches", type=int, default=60, help="batches of 64 per loader measurement")
    ap.add_argument("--slice", type=int, default=300, help="training steps of the memory slice (lxmert-mini)")
    ap.add_argument("--warmup", type=int, default=100, help="training steps before the memory slice (the allocator's "
                    "and the optimizer's first allocations)")
    ap.add_argument("--steps", type=int, default=20, help="steps per variant and round of the step-time ratio")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", default="lxmert-mini:64,lxmert-base:16",
                    help="preset:batch pairs of the step-time comparison")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--loader-only", default=None, help=argparse.SUPPRESS)  # the fresh loader process
    args = ap.parse_args()
    if args.loader_only:
        loader_only(Path(args.loader_only), args.loader_batches)
        return
    n = max(64 * 4, round(COCO_IMAGES * args.scale))
    root = Path(args.root or tempfile.mkdtemp(prefix="vlm-store-scale-"))
    store_dir = root / "store"
    report: dict = {"images": n, "regions": args.regions, "dim": args.dim, "threads": torch.get_num_threads(),
                    "cpu": _cpu()}
    try:
        print(f"# a synthetic store of {n:,} images x {args.regions} x {args.dim} float16 in {store_dir}; "
              f"{torch.get_num_threads()} threads; {report['cpu']}", flush=True)
        seconds, size = write_store(store_dir, n, args.regions, args.dim, args.shard_size)
        shards = sorted(store_dir.glob("shard-*.tar"))
        sample_bytes = size / n
        report.update(write_s=seconds, bytes=size, write_mbps=size / seconds / MB)
        print(f"write: {size / 1e9:.2f} GB in {seconds:.0f} s = {size / seconds / MB:.0f} MB/s "
              f"({len(shards)} shards, {sample_bytes / 1024:.0f} KiB a sample)", flush=True)
        print(f"the peer's design (every feature in RAM as float32, per process): "
              f"{n * args.regions * args.dim * 4 / 1e9:.1f} GB", flush=True)

        evict(shards + [store_dir / "index-hash.npy", store_dir / "index-entries.npy"])
        start = time.perf_counter()
        store = FeatureStore(store_dir)
        report["open_s"] = time.perf_counter() - start
        print(f"open: {report['open_s']:.3f} s (manifest + memory-mapped index, pages evicted)    target <= 2 s")
        ids = list(store.ids())

        disk = disk_read_mbps(shards, int(args.read_gb * 1e9))
        report["disk_mbps"] = disk
        print(f"disk, sequential 8 MB reads: {disk:.0f} MB/s", flush=True)
        report["loader"] = {}
        for workers in (0, 1, 2):
            for prefetch in (False, True):
                evict(shards)
                before = cached_bytes(shards)
                rate, mbps = loader_rate(store, ids, workers, args.loader_batches, sample_bytes, prefetch,
                                         seed=1 + 2 * workers + prefetch)
                after = cached_bytes(shards)
                report["loader"][f"{workers}{'-prefetch' if prefetch else ''}"] = {
                    "samples_per_s": rate, "mbps": mbps, "cached_before": before, "cached_after": after}
                held = "" if before is None else (f"; page cache held {before / 1e9:.2f} GB of the store before, "
                                                  f"{after / 1e9:.2f} GB after")
                print(f"loader, {workers} workers, {'with' if prefetch else 'no'} prefetch hints: {rate:.0f} "
                      f"samples/s = {mbps:.0f} MB/s = {mbps / disk:.2f} of the disk{held}    target >= 0.70",
                      flush=True)

        # memory: the loader alone (a fresh process), then a training rank over a long slice
        tok = vlm.load_tokenizer()
        data = make_data(store, ids, tok)
        plan = EpochPlan(len(data), 64, seed=0)
        pss = loader_only_pss(store_dir, max(40, args.loader_batches * 2))
        worst = max(pss, key=sum)
        report["loader_pss_mb"] = sum(worst)
        report["loader_pss_samples"] = pss
        print(f"loader-only process + 2 workers, fresh process, PSS sampled every 10 of "
              f"{max(40, args.loader_batches * 2)} batches: at most {sum(worst):.0f} MB (process {worst[0]:.0f} + workers "
              f"{' + '.join(f'{w:.0f}' for w in worst[1:])})    target <= 1,500 MB", flush=True)
        trainer = make_trainer("lxmert-mini", data, 64, root)
        total = min(args.warmup + args.slice, plan.batches_per_epoch)
        loader = iter(epoch_loader(data, plan, 0, num_workers=2, stop=total))
        every = max(1, args.slice // 10)
        warm, samples = [], []  # PSS every `every` steps, during the warm-up and over the slice after it
        for step, batch in enumerate(loader):
            trainer.train_step([batch])
            if step % every == every - 1:
                (warm if step < args.warmup else samples).append(family_pss_mb())
        del loader
        first, last = samples[0], samples[-1]
        report.update(train_pss_warmup_mb=warm, train_pss_mb=samples, train_pss_growth=(last - first) / first)
        print(f"training rank (lxmert-mini, batch 64) + 2 workers, PSS during the first {args.warmup} steps: "
              f"{' / '.join(f'{s:.0f}' for s in warm)} MB; then every {every} steps over {args.slice} steps: "
              f"{' / '.join(f'{s:.0f}' for s in samples)} MB; growth over the slice {100 * (last - first) / first:+.1f}%"
              "    target <= +5%", flush=True)

        # step time: the real loader vs batches in memory, from disk and over HTTP
        server, url = serve(store_dir)
        try:
            remote = make_data(FeatureStore(url), ids, tok)
            report["steps"] = {}
            for spec in args.archs.split(","):
                arch, batch = spec.split(":")
                trainer = make_trainer(arch, data, int(batch), root)
                plan = EpochPlan(len(data), int(batch), seed=0)
                memory = [data.batch(plan.indices(9, p), 9) for p in range(args.steps)]
                steps_per_s(trainer, data, 2, 8, memory[:2])  # warm-up
                rates: dict[str, list[float]] = {"memory": [], "disk": [], "http": []}
                for r in range(args.rounds):
                    rates["memory"].append(steps_per_s(trainer, data, args.steps, r, memory))
                    evict(shards)
                    rates["disk"].append(steps_per_s(trainer, data, args.steps, r, None))
                    evict(shards)
                    rates["http"].append(steps_per_s(trainer, remote, args.steps, args.rounds + r, None))
                med = {k: statistics.median(v) for k, v in rates.items()}
                report["steps"][arch] = {"batch": int(batch), **med, "rounds": rates}
                print(f"{arch}, batch {batch}: {med['memory']:.3f} steps/s in memory; real loader from disk "
                      f"{med['disk'] / med['memory']:.3f}x (target >= 0.95), over HTTP "
                      f"{med['http'] / med['memory']:.3f}x (target >= 0.90); median of {args.rounds} rounds of "
                      f"{args.steps} steps", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
