"""`keras-sepseq bench`'s report: a table of rates and ratios, and a chart."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["format_report", "plot_report"]


def format_report(report: dict[str, Any]) -> str:
    """The table `keras-sepseq bench` prints: rates and ratios per candidate.

    Args:
        report: What `run_bench` returned.

    Returns:
        Text, one line per candidate.

    Example:

    >>> print(format_report(report))  # doctest: +SKIP
    """
    limit = report["decode_limit"]["images_per_second"]
    lines = [
        f"{'candidate':<38} {'cold/s':>7} {'steady/s':>8} {'best/s':>7} {'cold vs':>8} {'steady vs':>9} {'cold vs':>7} "
        f"{'steady vs':>9} {'best vs':>8} {'peak mem':>8}",
        f"{'':<38} {'':>7} {'':>8} {'':>7} {'tf.data':>8} {'tf.data':>9} {'decode':>7} {'numpy':>9} {'numpy':>8} {'MB':>8}",
    ]  # fmt: skip
    for r in report["results"]:
        ratio = report["ratios"][r["name"]]
        fmt = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        lines.append(
            f"{r['name']:<38} {r['cold']:7,.0f} {r['steady']:8,.0f} {r.get('best', 0):7,.0f} "
            f"{fmt(ratio['cold_vs_pipeline']):>8} {fmt(ratio['steady_vs_pipeline']):>9} "
            f"{fmt(ratio['cold_vs_decode_limit']):>7} {fmt(ratio.get('steady_vs_numpy')):>9} "
            f"{fmt(ratio.get('best_vs_numpy')):>8} {r['peak_rss_mb']:8,.0f}"
        )
    lines.append(
        f"{'decode limit':<42} {limit:8,.0f} (decode + resize on one core x {report['decode_limit']['cores_used']})"
    )
    for name, rates in report.get("loaders", {}).items():
        lines.append(
            f"{name + ', loader only (no model)':<52} epoch 1 {rates[0]:7,.0f}/s, then {rates[-1]:7,.0f}/s "
            f"= {rates[-1] / limit:.2f}x decode limit"
        )
    for name, m in report.get("construction", {}).items():
        lines.append(
            f"{name} over {m['paths']:,} paths: built in {m['seconds']:.2f} s, +{m['rss_mb']:.0f} MB RSS, "
            f"pickled {m['pickle_mb']:.1f} MB"
        )
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str) -> None:
    """Writes a bar chart of cold and steady images/s per candidate to a PNG.

    Args:
        report: What `run_bench` returned.
        path: The PNG file to write.

    Raises:
        ImportError: If matplotlib is missing; the message says how to
            install it.

    Example:

    >>> plot_report(report, "bench.png")  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "--plot needs matplotlib: pip install 'keras-sepseq[plot]' (or pip install matplotlib)"
        ) from e
    results = report["results"]
    names = [r["name"] for r in results]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 2.0))
    ax.barh(y - 0.2, [r["cold"] for r in results], height=0.4, label="first epoch (cold)", color="#8fb3d9")
    ax.barh(y + 0.2, [r["steady"] for r in results], height=0.4, label="later epochs (steady)", color="#2f6db5")
    limit = report["decode_limit"]["images_per_second"]
    ax.axvline(limit, color="#c0392b", linestyle="--", label=f"decode limit ({limit:,.0f}/s)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    settings = report["settings"]
    ax.set_xlabel("images per second through model.fit")
    ax.set_title(
        f"{settings['samples']} images resized to {settings['image_size'][0]}x{settings['image_size'][1]}, "
        f"batch {settings['batch_size']}, {settings['cores']} cores"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
