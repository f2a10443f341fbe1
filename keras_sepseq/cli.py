"""The `keras-sepseq` command line.

Exit codes: 0 when all went well, 1 when the command ran and found a
problem (e.g. the demo model stayed near chance), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


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
    return parser


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
