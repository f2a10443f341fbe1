"""The `keras-sepseq` command line.

Exit codes: 0 when all went well, 1 when the command ran and found a
problem (e.g. the demo model stayed near chance), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _storage_option(text: str) -> tuple[list[str], object]:
    """`KEY=VALUE` (KEY may be dotted, as `client_kwargs.endpoint_url`; VALUE is JSON when it parses as JSON)."""
    import json

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. client_kwargs.endpoint_url=http://...: {text!r}")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return name.split("."), parsed


def _storage_options(pairs: list[tuple[list[str], object]] | None) -> dict | None:
    """The nested dict of `--storage-option` values, or `None` when none was given."""
    if not pairs:
        return None
    options: dict = {}
    for path, value in pairs:
        level = options
        for part in path[:-1]:
            level = level.setdefault(part, {})
        level[path[-1]] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of `keras-sepseq` and its subcommands.

    Returns:
        An `argparse.ArgumentParser`.

    Example:

    >>> build_parser().parse_args(["demo", "--epochs", "2"]).epochs
    2
    """
    parser = argparse.ArgumentParser(
        prog="keras-sepseq",
        description="Feed Keras models from datasets stored as one file per sample.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="write a synthetic PNG + .npy dataset and train a small CNN on it",
        description=(
            "Writes a learnable synthetic dataset as separate PNG and .npy files (once; reused if "
            "present), trains a small CNN through SeparatedSequence, and prints images/s per epoch "
            "and the held-out accuracy, which is far above chance only if images and labels stay paired."
        ),
    )
    demo.add_argument("--dir", default=None, help="dataset folder (default: %(default)s -> ~/.cache/keras_sepseq/demo)")
    demo.add_argument("--samples", type=_positive_int, default=2000, help="image/label pairs (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=5, help="training epochs (default: %(default)s)")
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default: %(default)s)")
    demo.add_argument("--workers", type=_positive_int, default=2, help="loader workers (default: %(default)s)")
    demo.add_argument("--use-multiprocessing", action="store_true", help="use process workers instead of threads")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the shuffling (default: %(default)s)")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser(
        "bench",
        help="compare input pipelines end to end through model.fit on the same files",
        description=(
            "Measures images/s through model.fit with a tiny model, first epoch and later epochs apart, "
            "for the classic tf.data pipeline, a Python generator, a plain keras PyDataset, "
            "SeparatedSequence (threads, processes, cached) and numpy arrays in RAM, plus the decode "
            "limit (single-core decode+resize rate x cores used). Prints ratios measured in this one run."
        ),
    )
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--dir", help="benchmark the image files below DIR (labels are made up)")
    source.add_argument(
        "--synthetic", nargs="?", const="", default=None, metavar="DIR",
        help="write synthetic 200-360 px PNG and JPEG images (the default) to DIR "
        "(default: ~/.cache/keras_sepseq/bench), once",
    )  # fmt: skip
    bench.add_argument(
        "--samples", type=_positive_int, default=None, help="images to use (default: 2000; 96 with --quick)"
    )
    bench.add_argument(
        "--image-size",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="resize to H x W (default: 128 128; 64 64 with --quick)",
    )
    bench.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default: %(default)s)")
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs per candidate, first one cold (default: 4; 2 with --quick)",
    )
    bench.add_argument(
        "--workers", type=_positive_int, default=2, help="workers of the parallel candidates (default: %(default)s)"
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=1,
        help="rounds over all candidates, medians reported (default: %(default)s)",
    )
    bench.add_argument(
        "--only", action="append", metavar="NAME", help="run only candidates whose name contains NAME (repeatable)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    bench.add_argument("--plot", metavar="FILE.png", help="also write a bar chart (needs matplotlib)")
    bench.add_argument("--quick", action="store_true", help="a small, fast run: a smoke test, not a measurement")
    bench.add_argument(
        "--small",
        action="store_true",
        help="instead: small samples (8x8 PNGs, short sequences) with 1 worker, threads, processes and tf.data, "
        "the engine's own cost per sample, and the GIL ceiling of threads on 16 and 64 cores",
    )
    bench.add_argument(
        "--remote",
        action="store_true",
        help="instead: the photos in an S3 bucket on a loopback server with added latency, against local disk, "
        "through model.fit (first epoch, and later epochs with a directory cache), and the requests a listing takes",
    )
    bench.add_argument(
        "--volumes",
        action="store_true",
        help="instead: 3-D scans (NIfTI, oriented and resampled) loaded whole and cut into patches with each worker "
        "setting, against decoding a volume for every patch, and later epochs from a directory cache",
    )
    bench.add_argument(
        "--latency", type=float, default=0.05, help="with --remote: seconds added per request (default: %(default)s)"
    )
    bench.set_defaults(handler=_bench)

    inspect = commands.add_parser(
        "inspect",
        help="pair image and label files and check every pair",
        description=(
            "Pairs the files matched by IMAGE_GLOB and LABEL_GLOB (by the last number in each file name, "
            "or --key), then loads every pair: prints counts, files without a partner, files that fail "
            "to load with the reason, and image size, mode, format, label shape and class histograms. "
            "Exit code 0 when every file paired and loaded, 1 when problems were found. Quote the globs."
        ),
    )
    inspect.add_argument("image_glob", metavar="IMAGE_GLOB", help="e.g. 'data/image_*.png' (quoted)")
    inspect.add_argument("label_glob", metavar="LABEL_GLOB", help="e.g. 'data/label_*.npy' (quoted)")
    inspect.add_argument("--key", help="regular expression whose first group pairs the files (default: last number)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    inspect.add_argument("--workers", type=_positive_int, default=None, help="threads (default: the number of cores)")
    inspect.add_argument(
        "--storage-option", type=_storage_option, action="append", metavar="KEY=VALUE",
        help="a storage option for URL globs (s3://...), e.g. client_kwargs.endpoint_url=http://127.0.0.1:9000 "
        "(repeatable)",
    )  # fmt: skip
    inspect.set_defaults(handler=_inspect)

    preview = commands.add_parser(
        "preview",
        help="write a contact sheet of samples with their labels",
        description="Writes a grid of random samples, each with its label and file name under it, to a PNG.",
    )
    preview.add_argument("image_glob", metavar="IMAGE_GLOB", help="e.g. 'data/image_*.png' (quoted)")
    preview.add_argument("label_glob", metavar="LABEL_GLOB", help="e.g. 'data/label_*.npy' (quoted)")
    preview.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    preview.add_argument("--n", type=_positive_int, default=16, help="samples to show (default: %(default)s)")
    preview.add_argument(
        "--seed", type=int, default=0, help="which samples: same seed, same sheet (default: %(default)s)"
    )
    preview.add_argument("--size", type=_positive_int, default=128, help="cell size in pixels (default: %(default)s)")
    preview.add_argument("--key", help="regular expression whose first group pairs the files (default: last number)")
    preview.add_argument(
        "--storage-option", type=_storage_option, action="append", metavar="KEY=VALUE",
        help="a storage option for URL globs, as for inspect (repeatable)",
    )  # fmt: skip
    preview.set_defaults(handler=_preview)
    return parser


def _inspect(args: argparse.Namespace) -> int:
    import json

    from keras_sepseq.inspection import format_inspection, inspect_files

    try:
        result = inspect_files(
            args.image_glob, args.label_glob, key=args.key, progress=not args.json, workers=args.workers,
            storage_options=_storage_options(args.storage_option),
        )  # fmt: skip
    except (ValueError, OSError, ImportError) as e:
        print(f"keras-sepseq inspect: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_inspection(result))
    return 0 if result["ok"] else 1


def _preview(args: argparse.Namespace) -> int:
    from keras_sepseq.inspection import contact_sheet
    from keras_sepseq.pairing import match_files

    options = _storage_options(args.storage_option)
    try:
        matching = match_files(args.image_glob, args.label_glob, key=args.key, storage_options=options)
    except (ValueError, OSError, ImportError) as e:
        print(f"keras-sepseq preview: error: {e}", file=sys.stderr)
        return 2
    if not matching.image_paths:
        print("keras-sepseq preview: error: no image has a label file with the same key", file=sys.stderr)
        return 2
    sheet, problems = contact_sheet(
        matching.image_paths, matching.label_paths, n=args.n, seed=args.seed, cell=args.size, storage_options=options
    )
    try:
        sheet.save(args.out)
    except (OSError, ValueError) as e:
        print(f"keras-sepseq preview: error: cannot write {args.out!r}: {e}", file=sys.stderr)
        return 2
    shown = min(args.n, len(matching.image_paths))
    print(f"wrote {args.out}: {shown} of {len(matching.image_paths)} pairs, {sheet.width}x{sheet.height} px")
    for problem in problems:
        print(f"unreadable: {problem}", file=sys.stderr)
    unpaired = len(matching.orphan_images) + len(matching.orphan_labels)
    if unpaired:
        print(f"{unpaired} files have no partner (run keras-sepseq inspect)", file=sys.stderr)
    return 1 if problems or not matching.ok else 0


def _bench(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from keras_sepseq import bench, bench_report

    samples = args.samples or (96 if args.quick else 2000)
    size = tuple(args.image_size or ((64, 64) if args.quick else (128, 128)))
    epochs = args.epochs or (2 if args.quick else 4)
    if epochs < 2:
        print("keras-sepseq bench: error: --epochs must be at least 2 (one cold, then steady)", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "keras-sepseq bench: error: --plot needs matplotlib: pip install 'keras-sepseq[plot]'", file=sys.stderr
            )
            return 2
    if args.small:
        return _bench_small(args)
    if args.remote:
        return _bench_remote(args, samples, size, epochs)
    if args.volumes:
        return _bench_volumes(args, epochs)
    if args.dir:
        try:
            paths = bench.images_in(args.dir)[:samples]
        except ValueError as e:
            print(f"keras-sepseq bench: error: {e}", file=sys.stderr)
            return 2
        labels = np.random.default_rng(0).integers(0, bench.NUM_CLASSES, size=len(paths))
        print(f"benchmarking {len(paths)} images from {os.path.abspath(args.dir)}")
    else:
        from keras_sepseq.demo import default_demo_dir

        folder = args.synthetic or os.path.join(os.path.dirname(default_demo_dir()), "bench")
        start = time.perf_counter()
        paths, label_paths = bench.make_bench_dataset(folder, samples=samples)
        labels = np.array([int(np.load(p)) for p in label_paths])
        print(f"dataset: {samples} synthetic PNG/JPEG images (200-360 px) in {os.path.abspath(folder)} "
              f"(ready in {time.perf_counter() - start:.1f} s)")  # fmt: skip
    print(f"resizing to {size[0]}x{size[1]}, batch {args.batch_size}, {epochs} epochs per candidate, "
          f"{args.workers} workers, {os.cpu_count()} cores")  # fmt: skip
    report = bench.run_bench(
        paths,
        labels,
        image_size=size,
        batch_size=args.batch_size,
        epochs=epochs,
        workers=args.workers,
        only=args.only,
        scale_paths=100_000 if args.quick else 1_000_000,
        repeats=args.repeats,
    )
    print()
    print(bench_report.format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"measurements written to {args.json}")
    if args.plot:
        bench_report.plot_report(report, args.plot)
        print(f"bar chart written to {args.plot}")
    return 0


def _bench_small(args: argparse.Namespace) -> int:
    import json

    from keras_sepseq import bench, bench_small
    from keras_sepseq.demo import default_demo_dir

    root = args.synthetic or os.path.join(os.path.dirname(default_demo_dir()), "bench")
    photos = (
        bench.images_in(args.dir) if args.dir else bench.make_bench_dataset(root, samples=48 if args.quick else 200)[0]
    )
    samples = args.samples or (600 if args.quick else 6000)
    size = tuple(args.image_size or ((64, 64) if args.quick else (128, 128)))
    print(f"small samples: {samples} of each kind in {os.path.join(root, 'small')}; photos: {len(photos)}, "
          f"resized to {size[0]}x{size[1]}; {args.workers} workers, {os.cpu_count()} cores")  # fmt: skip
    report = bench_small.run_small(
        os.path.join(root, "small"), photos[:200], size, samples=samples, workers=args.workers,
        seconds=0.3 if args.quick else 2.0, rounds=1 if args.quick else max(5, args.repeats),
    )  # fmt: skip
    print(bench_small.format_small(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"measurements written to {args.json}")
    return 0


def _bench_remote(args: argparse.Namespace, samples: int, size: tuple, epochs: int) -> int:
    import json

    import numpy as np

    from keras_sepseq import bench, bench_remote
    from keras_sepseq.demo import default_demo_dir

    try:
        import moto  # noqa: F401
        import obstore  # noqa: F401
    except ImportError as e:
        print(f"keras-sepseq bench: error: --remote needs obstore and moto ({e}): pip install 'keras-sepseq[remote,test]'",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.dir:
        paths = bench.images_in(args.dir)[:samples]
    else:
        folder = args.synthetic or os.path.join(os.path.dirname(default_demo_dir()), "bench")
        paths = bench.make_bench_dataset(folder, samples=samples)[0]
    labels = np.random.default_rng(0).integers(0, bench.NUM_CLASSES, size=len(paths))
    print(f"object storage: {len(paths)} photos resized to {size[0]}x{size[1]}, batch {args.batch_size}, "
          f"{args.workers} workers, {os.cpu_count()} cores")  # fmt: skip
    report = bench_remote.run_remote(
        paths, labels, image_size=size, batch_size=args.batch_size, epochs=max(epochs, 3) if not args.quick else 2,
        workers=args.workers, latency=args.latency, list_keys=5_000 if args.quick else 100_000,
        rounds=args.repeats,
    )  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"measurements written to {args.json}")
    return 0


def _bench_volumes(args: argparse.Namespace, epochs: int) -> int:
    import json

    try:
        import nibabel  # noqa: F401
    except ImportError as e:
        print(f"keras-sepseq bench: error: --volumes needs nibabel ({e}): pip install 'keras-sepseq[nifti]'",
              file=sys.stderr)  # fmt: skip
        return 2
    from keras_sepseq.bench_volumes import run_volumes

    print(f"volumes: {os.cpu_count()} cores")
    if args.quick:
        report = run_volumes(count=6, shape=(48, 56, 40), patch_size=(24, 24, 24), epochs=2)
    else:
        report = run_volumes(epochs=max(epochs, 3))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"measurements written to {args.json}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from keras_sepseq.demo import run_demo

    if args.samples < 8:
        print("keras-sepseq demo: error: --samples must be at least 8", file=sys.stderr)
        return 2
    result = run_demo(
        args.dir,
        samples=args.samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        use_multiprocessing=args.use_multiprocessing,
        seed=args.seed,
    )
    if result.accuracy < 2 * result.chance:
        print(
            f"keras-sepseq demo: accuracy {result.accuracy:.3f} is not far above chance; "
            "try more --samples or --epochs",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-sepseq` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv: The arguments after the program name.

    Returns:
        The exit code: 0 ok, 1 problems found, 2 usage error.

    Example:

    >>> main(["demo", "--samples", "200", "--epochs", "1"])  # doctest: +SKIP
    0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide TensorFlow's C++ start-up chatter
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
