"""The default pipelines of the generated worlds, timed, and their report.

    # generation and first-use extraction (timed apart from training), then pretraining and fine-tuning:
    python bench/worlds.py pipeline --world sort-of-clevr --arch lxmert --out runs/worlds/soc-lx-s0 [--seed 0]
        [--backend auto] [--no-pretrain] [--pretrain-steps N] [--finetune-steps N] [-- KEY=VALUE ...]
    # tables from finished pipeline folders (test accuracy per group and family, minutes to 90/94/97%):
    python bench/worlds.py report runs/worlds/soc-lx-s0 runs/worlds/soc-lx-s1 ...

A pipeline folder holds ``pre/`` (``vlm pretrain --data <world>-captions``), ``ft/`` (``vlm finetune --task vqa
--data <world> --init pre/model``) and ``pipeline.json``: the commands, wall seconds of each stage, the test metrics,
and the minutes (from the start of fine-tuning and from the start of the pipeline) at which the validation accuracy
first reached 90, 94 and 97%. Every stage is the real command line (``python -m vlm.cli``), one after another; time
only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THRESHOLDS = (90.0, 94.0, 97.0)


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def prepare(world: str, backend: str) -> dict[str, float]:
    """Generate the world and extract its built-in stores (first use), timed."""
    from features.builtin import builtin_store, default_cache_dir
    from vlm.data.builtin import builtin_images
    from vlm.data.scenes import world_folder

    cache = default_cache_dir(os.environ)
    fresh = not (world_folder(world, cache) / "generator.json").is_file()
    start = time.perf_counter()
    images = builtin_images(world, cache)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    for split in ("train", "test"):
        builtin_store(split, cache, backend, images=images, progress=False)
    return {"generation_s": round(generated, 1) if fresh else None, "extraction_s": round(time.perf_counter() - start, 1)}


def _curve(run: Path) -> list[tuple[float, float]]:
    """``(time, validation overall)`` of a fine-tuning run's evaluations."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/overall" in row:
            out.append((row["time"], row["eval/overall"]))
    return out


def _start_time(run: Path) -> float:
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return first["time"]


def pipeline(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "vlm.cli"]
    stores = []
    if args.features:  # stores made by `vlm extract` (the region-source comparison): training, then test images
        train_store, test_store = args.features.split(",")
        stores = [f"data.features={train_store}", f"data.eval_features={test_store}"]
    common = [f"train.seed={args.seed}", f"data.backend={args.backend}", "--no-progress", *stores, *args.overrides]
    record: dict = {"world": args.world, "arch": args.arch, "seed": args.seed, "backend": args.backend,
                    "pretrain": not args.no_pretrain, "machine": os.uname().nodename, "stages": {}}
    if not args.features:
        record["stages"].update(prepare(args.world, args.backend))
    record["features"] = args.features
    t0 = time.time()
    init = []
    if not args.no_pretrain:
        cmd = [*py, "pretrain", "--arch", args.arch, "--data", f"{args.world}-captions", "--out", str(out / "pre"),
               "--overwrite", *common, *([f"train.max_steps={args.pretrain_steps}"] if args.pretrain_steps else [])]
        record["stages"]["pretrain_s"] = round(_run(cmd, out / "pre.log"), 1)
        record["pretrain_cmd"] = " ".join(cmd[2:])
        init = ["--init", str(out / "pre" / "model")]
    ft_start = time.time()
    cmd = [*py, "finetune", "--task", "vqa", "--arch", args.arch, "--data", args.world, *init, "--out",
           str(out / "ft"), "--overwrite", *common,
           *([f"train.max_steps={args.finetune_steps}"] if args.finetune_steps else [])]
    record["stages"]["finetune_s"] = round(_run(cmd, out / "ft.log"), 1)
    record["finetune_cmd"] = " ".join(cmd[2:])
    summary = json.loads((out / "ft" / "summary.json").read_text())
    record["test"] = summary["metrics"]
    record["best"] = summary.get("best")
    record["steps"] = summary["steps"]
    curve = _curve(out / "ft")
    record["minutes_to"] = {}
    for threshold in THRESHOLDS:
        hit = next((t for t, acc in curve if acc >= threshold), None)
        record["minutes_to"][f"{threshold:g}"] = None if hit is None else {
            "finetune": round((hit - ft_start) / 60, 1), "pipeline": round((hit - t0) / 60, 1)}
    record["stages"]["pipeline_s"] = round(time.time() - t0, 1)
    (out / "pipeline.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("stages", "minutes_to", "steps")}, indent=1))
    print(f"test overall {record['test']['overall']:.2f}%")


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def report(args: argparse.Namespace) -> None:
    rows = [json.loads((Path(d) / "pipeline.json").read_text()) | {"dir": d} for d in args.dirs]
    groups = sorted({g for r in rows for g in r["test"].get("per_question_type", {})})
    families = [f for r in rows for f in r["test"].get("per_answer_type", {})]
    families = list(dict.fromkeys(families))
    head = ["run", "overall", *groups, *families, "pretrain min", "finetune min", "to 90/94/97 (pipeline min)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        t = r["test"]
        to = "/".join("-" if r["minutes_to"].get(k) is None else f"{r['minutes_to'][k]['pipeline']:.0f}"
                      for k in ("90", "94", "97"))
        cells = [Path(r["dir"]).name, f"{t['overall']:.2f}",
                 *[f"{t.get('per_question_type', {}).get(g, float('nan')):.2f}" for g in groups],
                 *[f"{t.get('per_answer_type', {}).get(f, float('nan')):.2f}" for f in families],
                 _minutes(r["stages"].get("pretrain_s")), _minutes(r["stages"].get("finetune_s")), to]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--world", required=True, choices=["sort-of-clevr", "scenes"])
    p.add_argument("--arch", default="lxmert", choices=["lxmert", "vilbert"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--no-pretrain", action="store_true")
    p.add_argument("--features", default="", help="TRAIN_STORE,TEST_STORE made by vlm extract (else the built-in)")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="KEY=VALUE for both stages")
    r = sub.add_parser("report")
    r.add_argument("dirs", nargs="+")
    args = parser.parse_args()
    pipeline(args) if args.command == "pipeline" else report(args)


if __name__ == "__main__":
    main()
