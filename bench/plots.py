"""PNG figures for the bench suites, drawn from the JSON payload each suite writes.

Every function takes the payload (exactly what went into ``<name>.json``) and the path prefix
``results/<name>`` and returns the PNG paths it wrote (``<name>_<figure>.png``). Matplotlib runs
on the Agg backend (no display). Suites call these through :func:`bench.common.write_with_plots`,
which writes the JSON first, so a plotting failure never loses the numbers.
"""

from __future__ import annotations

from pathlib import Path

# What each panel shows: the first metric of the list present in the results is drawn. The demo
# world has phrasing / probe groups (gs_anchor, ls_other, ...); real data only gs and ls.
ES = ["es"]
GS = ["gs_anchor", "gs"]
GS_UNSEEN = ["gs_unseen"]
LS = ["ls_other", "ls"]
LS_SAME = ["ls_same"]
LABELS = {"es": "ES", "gs": "GS (paraphrase)", "gs_anchor": "GS (anchor phrasing)", "gs_unseen": "GS (unseen phrasing)",
          "ls": "LS", "ls_other": "LS (other entities)", "ls_same": "LS (same entity)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _pick(means: list[dict], candidates: list[str]) -> str | None:
    """The first candidate metric that some row has a value for."""
    for key in candidates:
        if any(m.get(key) is not None for m in means):
            return key
    return None


def _panels(means: list[dict], panels) -> list[tuple[str, str]]:
    out = []
    for candidates in panels:
        key = _pick(means, candidates)
        if key is not None:
            out.append((LABELS.get(key, key), key))
    return out


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def bar_chart(rows: list[dict], panels, title: str, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per method (``rows``: method, mean, std)."""
    plt = _pyplot()
    means = [r["mean"] for r in rows]
    metrics = _panels(means, panels)
    if not rows or not metrics:
        raise ValueError(f"nothing to plot for {path.name}")
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(min(13.0, max(6.0, 1.5 + 0.22 * len(metrics) * len(rows))), 4.2))
    for i, row in enumerate(rows):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        ys = [row["mean"].get(key) or 0.0 for _, key in metrics]
        errs = [(row.get("std") or {}).get(key) or 0.0 for _, key in metrics]
        ax.bar(xs, ys, width, yerr=errs if any(errs) else None, label=row["method"], capsize=2)
    ax.set_xticks(range(len(metrics)), [label for label, _ in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def line_panels(series: dict[str, list[tuple[float, dict]]], panels, xlabel: str, title: str, path: Path,
                logx: bool = False) -> Path:
    xs = sorted({x for points in series.values() for x, _ in points})
    """One panel per metric, one line per method; ``series[method] = [(x, means), ...]``."""
    plt = _pyplot()
    means = [m for points in series.values() for _, m in points]
    metrics = _panels(means, panels)
    if not series or not metrics:
        raise ValueError(f"nothing to plot for {path.name}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.6), squeeze=False)
    for ax, (label, key) in zip(axes[0], metrics):
        for method, points in series.items():
            pts = sorted((x, m.get(key)) for x, m in points if m.get(key) is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
        if logx:
            ax.set_xscale("log")
            ax.minorticks_off()
        if len(xs) <= 8:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_title(label)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, y=1.03)
    return _save(fig, path)


# ---- per suite -------------------------------------------------------------------------------


def plot_quality(payload: dict, prefix: Path) -> list[Path]:
    """One bar chart per batch size: ES / GS / LS per method (demo world or real data)."""
    results = payload["results"]
    out = []
    for n in sorted({r["batch"] for r in results}):
        rows = [r for r in results if r["batch"] == n]
        where = payload.get("size") or payload.get("dataset") or ""
        out.append(bar_chart(rows, [ES, GS, GS_UNSEEN, LS, LS_SAME],
                             f"edit quality, {where}, batch n={n}" if where else f"edit quality, batch n={n}",
                             prefix.with_name(f"{prefix.name}_n{n}.png")))
    return out


def plot_cost(payload: dict, prefix: Path) -> list[Path]:
    """Edit time and peak memory vs batch size, and vs the number of steps S."""
    plt = _pyplot()
    out = []
    sizes = payload.get("batch_sizes") or []
    if sizes:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
        xs = [r["batch"] for r in sizes]
        a.plot(xs, [r["edit_s"] for r in sizes], marker="o")
        a.set(xscale="log", yscale="log", xlabel="batch size (facts per edit)", ylabel="seconds per edit()",
              title="edit time vs batch (S=2)")
        b.plot(xs, [r.get("peak_delta_mb", r.get("peak_mb")) for r in sizes], marker="o")
        b.set(xscale="log", xlabel="batch size", ylabel="MB", title="peak memory added by edit()")
        for ax in (a, b):
            ax.grid(alpha=0.3)
        out.append(_save(fig, prefix.with_name(f"{prefix.name}_batch.png")))
    steps = payload.get("edit_vs_floor") or []
    if steps:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
        xs = [r["n_steps"] for r in steps]
        a.plot(xs, [r["edit_s"] for r in steps], marker="o", label="edit()")
        a.plot(xs, [r["floor_s"] for r in steps], marker="s", linestyle="--", label="floor S×(fwd+bwd)")
        a.set(xlabel="steps S", ylabel="seconds", title=f"edit time vs S (batch {steps[0]['batch']})")
        a.legend(fontsize=8)
        if any(r.get("peak_delta_mb") is not None for r in steps):
            b.plot(xs, [r.get("peak_delta_mb") for r in steps], marker="o")
        b.set(xlabel="steps S", ylabel="MB", title="peak memory added by edit()")
        for ax in (a, b):
            ax.set_xticks(xs)
            ax.grid(alpha=0.3)
        out.append(_save(fig, prefix.with_name(f"{prefix.name}_steps.png")))
    if not out:
        raise ValueError("no cost rows to plot")
    return out


def plot_lowdata(payload: dict, prefix: Path) -> list[Path]:
    """ES / GS / LS against the share of meta-training edits, one line per method."""
    series: dict[str, list] = {}
    for r in payload["results"]:
        series.setdefault(r["method"], []).append((100 * r["fraction"], r["mean"]))
    return [line_panels(series, [ES, GS, LS], "% of meta-training edits", "low-data meta-training",
                        prefix.with_name(f"{prefix.name}_curve.png"), logx=True)]


def plot_sequential(payload: dict, prefix: Path) -> list[Path]:
    """ES / GS / LS on all T×n edits after T successive batches, one line per method."""
    series: dict[str, list] = {}
    for r in payload["results"]:
        series.setdefault(r["method"], []).append((r["T"] * r["n"], r["mean"]))
    n_values = sorted({r["n"] for r in payload["results"]})
    return [line_panels(series, [ES, GS, LS], f"edits applied (T batches × n={'/'.join(map(str, n_values))})",
                        "sequential editing", prefix.with_name(f"{prefix.name}_curve.png"))]
