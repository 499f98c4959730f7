"""Shared bench helpers: where the model and edits come from, timing, and writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(os.environ.get("SMEDIT_BENCH_RESULTS", "bench/results"))


def results_dir() -> Path:
    """Where results go, read at call time (``SMEDIT_BENCH_RESULTS``, default ``bench/results``)."""
    return Path(os.environ.get("SMEDIT_BENCH_RESULTS", str(RESULTS)))


def resolve_size(args) -> str:
    """``--size`` left unset means ``tiny`` with ``--quick`` and ``small`` otherwise."""
    if getattr(args, "size", None) is None:
        args.size = "tiny" if getattr(args, "quick", False) else "small"
    return args.size


def demo_world_model(data_dir: Path, size: str, seed: int = 0, train_editor: bool = False,
                     comparison: bool = True):
    """The demo world's base model (built and cached if absent), its tokenizer and world;
    ``comparison=False``: of the editors only the service's (no MALMEN comparison editor)."""
    from demo_world.build import build_demo
    from editor_core.models import load_model

    paths = build_demo(data_dir, size=size, seed=seed, progress=True, train_editor=train_editor,
                       comparison=comparison)
    model, tok = load_model(paths.model_dir, device="auto")
    return paths, model, tok, paths.load_world()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def write_result(name: str, payload: dict) -> Path:
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"environment": environment(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path


def write_with_plots(name: str, payload: dict, plot: Callable[[dict, Path], list[Path]] | None) -> tuple[Path, list[Path]]:
    """Write the JSON first, then PNG plots next to it (``<name>_*.png``).

    A plotting failure (matplotlib missing, a broken figure) is reported and swallowed: the JSON
    is already on disk, and the numbers matter more than the pictures.
    """
    path = write_result(name, payload)
    print(f"wrote {path}")
    pngs: list[Path] = []
    if plot is not None:
        try:
            pngs = plot(payload, path.with_suffix(""))
        except Exception as exc:  # noqa: BLE001 - never lose a finished run to a plot
            print(f"warning: plots for {name} not written ({type(exc).__name__}: {exc}); the JSON is complete")
        for png in pngs:
            print(f"wrote {png}")
    return path, pngs


def _cpu_memory_meter() -> tuple[str, Callable[[], int]]:
    """Bytes in use now: glibc's malloc in-use bytes (``mallinfo2``) where available, else the RSS.

    The malloc count also sees allocations that reuse freed memory, which the RSS does not.
    """
    import ctypes

    try:
        class _MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = _MallInfo2

        def in_use() -> int:
            info = mallinfo2()
            return int(info.uordblks + info.hblkhd)

        in_use()
        return "malloc_in_use", in_use
    except (OSError, AttributeError):
        page = os.sysconf("SC_PAGE_SIZE")

        def rss() -> int:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * page

        return "rss", rss


def peak_memory_during(fn: Callable[[], object], interval_s: float = 0.001) -> tuple[object, float]:
    """Run ``fn`` once; return its result and the peak memory it added, in bytes.

    CUDA: the allocator's peak above what was allocated before the call. CPU: memory in use
    (see :func:`_cpu_memory_meter`) sampled every ``interval_s`` by a thread, peak minus the value
    before the call (unlike ``ru_maxrss`` this is not monotonic over a run, so sizes can be
    compared; a peak shorter than the interval can be missed).
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        return result, float(torch.cuda.max_memory_allocated() - base)
    import threading

    _, meter = _cpu_memory_meter()
    base = meter()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], meter())
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], meter())
    return result, float(peak[0] - base)


# Student's t quantile t(0.975, df) for df = 1..30 (beyond: the normal 1.96); no scipy needed.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def ci95(values: list[float]) -> float | None:
    """Half-width of the 95 % confidence interval of the mean (t distribution); None for one value."""
    if len(values) < 2:
        return None
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return t * statistics.stdev(values) / len(values) ** 0.5


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console = Console()
    if not console.is_terminal:  # piped to a file: never squeeze columns to one word
        console = Console(width=max(120, sum(max(len(str(c)) for c in col) + 3 for col in zip(header, *rows))))
    console.print(table)
