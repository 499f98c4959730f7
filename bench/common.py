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


def demo_world_model(data_dir: Path, size: str, seed: int = 0, train_editor: bool = False):
    """The demo world's base model (built and cached if absent), its tokenizer and world."""
    from editor_core.demo import build_demo
    from editor_core.models import load_model

    paths = build_demo(data_dir, size=size, seed=seed, progress=True, train_editor=train_editor)
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"environment": environment(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
