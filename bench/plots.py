"""PNG bar charts for docs/benchmarks.md (matplotlib, installed by `pip install -e '.[bench]'`).

Every function returns the path it wrote, or None when matplotlib is not installed
(the tables are written either way).
"""

from __future__ import annotations

from pathlib import Path

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def grouped_bars(out: Path, title: str, ylabel: str, categories: list[str],
                 series: dict[str, list[float | None]], note: str = "") -> Path | None:
    """One group of bars per category, one bar per series; a missing value is left out
    and marked "n/m" (not measured)."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(categories) + 2), 4.2), dpi=100)
    top = max((v for vals in series.values() for v in vals if v is not None), default=1.0)
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
        for x, v in zip(xs, values, strict=True):
            if v is None:
                ax.text(x, 0, "n/m", ha="center", va="bottom", fontsize=7, rotation=90)
        bars = ax.bar([x for x, v in zip(xs, values, strict=True) if v is not None],
                      [v for v in values if v is not None], width, label=label)
        ax.bar_label(bars, fmt="%.0f" if top >= 100 else "%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(categories)), categories, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, top * 1.15)
    if len(series) > 1:
        ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
