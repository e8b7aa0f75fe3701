"""Training-pipeline benchmark: does the data path or the engine cost training speed, and do loader workers stay flat?

Prints, from one run (ratios are what to compare; these machines are noisy):

1. train steps/s with batches read from a real feature store through the engine's loader vs the same batches
   already in memory (same model, same engine step) — target >= 0.95;
2. the engine's ``Trainer.train_step`` vs a bare loop (autocast forward, backward, clip, AdamW step) on the same
   in-memory batches — target >= 0.97;
3. peak RSS (VmHWM) of DataLoader worker processes reading a store 1x and 4x as large (same texts) — target flat
   (within 5%);
4. the cost of the store's per-sample xxh3_64 checksum (format 2: every sample read is checked against the checksum its
   writer recorded): ``FeatureStore[id]`` over the whole store and ``stream()`` with the check vs ``verify=False``,
   and the engine step with store + loader checked vs unchecked — target cost < 3%. The check's own work (hashing a
   sample's bytes) is also timed directly on the same samples: the interleaved ratios carry a few percent of noise.

Variants are interleaved round by round and the median of the rounds is reported.

    python bench/pipeline.py [--steps 8] [--rounds 3] [--arch lxmert] [--workers 0] [--skip-rss]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlm  # noqa: E402
from features.extract import extract  # noqa: E402
from features.store import FeatureStore, stream  # noqa: E402
from pretraining.data import PretrainData, answer_vocab  # noqa: E402
from pretraining.objectives import build_objectives  # noqa: E402
from pretraining.task import PretrainTask  # noqa: E402
from vlm.config import TrainConfig  # noqa: E402
from vlm.data.readers import read_texts  # noqa: E402
from vlm.engine.loader import EpochPlan, epoch_loader  # noqa: E402
from vlm.engine.run import RunContext  # noqa: E402
from vlm.engine.trainer import Trainer, param_groups  # noqa: E402
from vlm.precision import autocast  # noqa: E402


class _Memory:
    """A batch source that returns pre-built batches (the 'already in memory' variant)."""

    def __init__(self, batches):
        self.batches, self.n = batches, len(batches)

    def __len__(self):
        return self.n * 64

    def batch(self, indices, epoch):
        raise NotImplementedError


def build_store(root: Path, copies: int) -> Path:
    """easy-VQA train images as `patches` features; ``copies`` > 1 lists every image that many times under new ids."""
    import easy_vqa

    out = root / f"store-x{copies}"
    if (out / "manifest.json").exists():
        return out
    paths = [Path(p) for _, p in sorted(easy_vqa.get_train_image_paths().items())]
    listing = root / f"list-x{copies}.txt"
    listing.write_text("".join(f"{p.stem}{'' if c == 0 else f'_{c}'}\t{p}\n" for c in range(copies) for p in paths))
    extract(str(listing), out, "patches", part=(0, 1), device="cpu", progress=False, num_workers=0)
    return out


def worker_peak_rss(data: PretrainData, batches: int, workers: int = 2) -> float:
    """Largest VmHWM (MiB) among the loader's worker processes after ``batches`` batches."""
    plan = EpochPlan(len(data), 64, seed=0)
    loader = epoch_loader(data, plan, 0, num_workers=workers)
    it = iter(loader)
    for _ in range(batches):
        next(it)
    peaks = []
    for w in it._workers:
        for line in Path(f"/proc/{w.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    del it
    return max(peaks)


def read_rate(read, rounds: int) -> dict[str, list[float]]:
    """Samples/s of ``read(verify)`` (which returns the samples it read) with and without the check.

    The two variants alternate which goes first from round to round, so neither always runs on a warmer cache or
    after the other's garbage.
    """
    rates: dict[str, list[float]] = {"checked": [], "unchecked": []}
    read(True)  # warm the page cache
    read(False)
    for r in range(rounds):
        order = (("checked", True), ("unchecked", False))
        for name, verify in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            n = read(verify)
            rates[name].append(n / (time.perf_counter() - start))
    return rates


def checksum_cost_us(store_dir: Path, ids: list[str]) -> tuple[float, float]:
    """(µs per sample the checksum adds, µs per sample of an unchecked ``FeatureStore[id]``) on the same samples.

    The direct measurement: the interleaved ratios above carry a few percent of run-to-run noise on these machines,
    more than the check costs. This times the check's own work where the reader does it — hash the bytes just read
    (still in cache) and compare with the index — as the difference of a read-bytes loop with and without it.
    """
    from features.store.format import sample_checksum

    store = FeatureStore(store_dir, verify=False)
    where = []
    for image_id in ids:
        e = store._index.find(image_id)
        where.append((store._fd(int(e["shard"])), int(e["size"]), int(e["offset"]), int(e["xxh3_64"])))

    def bytes_only():
        for fd, size, offset, _ in where:
            os.pread(fd, size, offset)

    def bytes_and_check():
        for fd, size, offset, digest in where:
            if sample_checksum(os.pread(fd, size, offset)) != digest:
                raise RuntimeError("checksum mismatch in the benchmark store")

    def read_all():
        for image_id in ids:
            store[image_id]

    best = {f: float("inf") for f in (bytes_only, bytes_and_check, read_all)}
    for _ in range(7):
        for f in best:
            start = time.perf_counter()
            f()
            best[f] = min(best[f], time.perf_counter() - start)
    extra = max(0.0, best[bytes_and_check] - best[bytes_only])
    return extra / len(ids) * 1e6, best[read_all] / len(ids) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="lxmert", choices=["lxmert", "vilbert"])
    ap.add_argument("--steps", type=int, default=8, help="train steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="loader workers of the store variant")
    ap.add_argument("--rss-batches", type=int, default=60, help="batches read before measuring worker RSS")
    ap.add_argument("--root", default=None, help="folder for the benchmark's feature stores (default: a temp dir)")
    ap.add_argument("--skip-rss", action="store_true", help="skip 3. (it extracts a store 4x as large)")
    args = ap.parse_args()
    torch.manual_seed(0)
    root = Path(args.root or tempfile.mkdtemp(prefix="vlm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    store1 = build_store(root, 1)
    texts = read_texts("easy-vqa", "train")
    answers = answer_vocab(texts)
    tok = vlm.load_tokenizer()
    data = PretrainData(texts, FeatureStore(store1), tok, answers, seed=0)
    model = vlm.create_model(f"{args.arch}-mini", task="pretraining", visual_feat_dim=data.store.feature_dim,
                             num_answers=len(answers), visual_obj_loss=False, visual_attr_loss=False,
                             text_init="all-minilm-l6-v2")
    task = PretrainTask(model, build_objectives({"mlm": 1, "region_feat": 1, "matching": 1, "qa": 1}))
    cfg = TrainConfig(batch_size=64, max_steps=10_000, log_every=10_000)
    run = RunContext(run_dir=root / "run", device=torch.device("cpu"), seed=cfg.seed)  # train_step only: no files
    trainer = Trainer(task, data, cfg, save_model=model, run=run, show_progress=False)
    plan = trainer.plan
    n = args.steps
    memory = [data.batch(plan.indices(0, p), 0) for p in range(n)]

    bare_opt = torch.optim.AdamW(param_groups(task, 0.01), lr=1e-4)

    def bare_step(batch):
        task.train()
        with autocast("cpu", cfg.precision):
            out = task(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    unchecked = PretrainData(texts, FeatureStore(store1, verify=False), tok, answers, seed=0)

    def run_store(r, source=data):
        start = time.perf_counter()
        for i, batch in enumerate(epoch_loader(source, plan, 1 + r, start=0, num_workers=args.workers)):
            trainer.train_step([batch])
            if i + 1 == n:
                break
        return n / (time.perf_counter() - start)

    def run_memory(_):
        start = time.perf_counter()
        for batch in memory:
            trainer.train_step([batch])
        return n / (time.perf_counter() - start)

    def run_bare(_):
        start = time.perf_counter()
        for batch in memory:
            bare_step(batch)
        return n / (time.perf_counter() - start)

    run_memory(0)  # warm-up (allocator, oneDNN kernels)
    rates = {"store": [], "memory": [], "bare": [], "store_unchecked": []}
    for r in range(args.rounds):
        rates["store"].append(run_store(r))
        rates["memory"].append(run_memory(r))
        rates["bare"].append(run_bare(r))
        rates["store_unchecked"].append(run_store(r, unchecked))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"# {args.arch}-mini pretraining, batch 64, precision {cfg.precision}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds of {n} steps")
    print(f"{'variant':<44}{'steps/s':>9}{'ratio':>8}  target")
    print(f"{'engine step, batches in memory':<44}{med['memory']:>9.3f}{1.0:>8.3f}")
    print(f"{f'engine step, store + loader ({args.workers} workers)':<44}{med['store']:>9.3f}"
          f"{med['store'] / med['memory']:>8.3f}  >= 0.95")
    print(f"{'bare loop, batches in memory':<44}{med['bare']:>9.3f}{1.0:>8.3f}")
    print(f"{'engine step vs bare loop':<44}{med['memory']:>9.3f}{med['memory'] / med['bare']:>8.3f}  >= 0.97")

    ids = list(FeatureStore(store1).ids())
    stores = {True: FeatureStore(store1), False: FeatureStore(store1, verify=False)}

    def random_access(verify):
        store = stores[verify]
        for image_id in ids:
            store[image_id]
        return len(ids)

    def streamed(verify):
        return sum(1 for _ in stream(store1, shuffle=False, verify=verify))

    reads = {"FeatureStore[id], every id": random_access, "stream(), every sample": streamed}
    rounds = max(args.rounds, 11)
    read_rates = {name: read_rate(read, rounds) for name, read in reads.items()}
    sample_kib = sum(f.stat().st_size for f in Path(store1).glob("*.tar")) / len(ids) / 1024
    print(f"# per-sample checksum (xxh3_64) of store reads ({len(ids)} samples of {sample_kib:.0f} KiB, page cache "
          f"warm, median of {rounds} rounds, order alternating)")
    print(f"{'variant':<44}{'checked/s':>11}{'unchecked/s':>13}{'ratio':>8}  target")
    for name, r in read_rates.items():
        on, off = statistics.median(r["checked"]), statistics.median(r["unchecked"])
        print(f"{name:<44}{on:>11.0f}{off:>13.0f}{on / off:>8.3f}  cost < 3% of a bare read")
    hash_us, read_us = checksum_cost_us(Path(store1), ids)
    print(f"{'checksum added vs FeatureStore[id] (us)':<44}{hash_us:>11.2f}{read_us:>13.1f}"
          f"{1 - hash_us / read_us:>8.3f}  cost < 3% of a bare read (best of 7)")
    on, off = med["store"], statistics.median(rates["store_unchecked"])
    print(f"{'engine step, store + loader (steps/s)':<44}{on:>11.3f}{off:>13.3f}{on / off:>8.3f}  >= 0.97")
    share = cfg.batch_size * hash_us / (1e6 / off)
    print(f"{'checksums of one batch / engine step (direct)':<44}{share * 100:>10.4f}%{'':>13}{1 - share:>8.3f}  >= 0.97")
    if args.skip_rss:
        return

    store4 = build_store(root, 4)
    rss = {}
    for name, path in (("1x", store1), ("4x", store4)):
        d = PretrainData(texts, FeatureStore(path), tok, answers, seed=0)
        rss[name] = worker_peak_rss(d, args.rss_batches)
    size = {name: sum(f.stat().st_size for f in Path(p).glob("*.tar")) / 2**20 for name, p in
            (("1x", store1), ("4x", store4))}
    print(f"# peak RSS of a loader worker (2 workers, {args.rss_batches} batches of 64, same {len(texts)} texts)")
    for name in ("1x", "4x"):
        print(f"store {name}: {size[name]:8.0f} MiB of shards   worker VmHWM {rss[name]:7.1f} MiB   "
              f"ratio {rss[name] / rss['1x']:.3f}")


if __name__ == "__main__":
    main()
