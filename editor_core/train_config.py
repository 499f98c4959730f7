"""Meta-training settings: what :func:`editor_core.train.meta_train` is asked to do.

Kept apart from the training loop so the service, the CLI and the benchmarks can build and
validate a configuration (and the editor configuration it implies) without the loop's code.
"""

from __future__ import annotations

from dataclasses import dataclass

from editor_core.editor import EditorConfig

REGULARISERS = ("l2", "kl")
L2_METRICS = ("frobenius", "key", "locality")


@dataclass
class TrainConfig:
    """Meta-training settings. ``reg_coef`` multiplies the L2 or KL term, once."""

    n_steps: int = 2
    reg: str = "l2"
    reg_coef: float = 1e-3
    rank: int = 64
    n_blocks: int = 2
    init_lr: float | None = None  # None: calibrated on training edits (see calibrate_init_lr)
    meta_lr: float = 1e-3
    batch_size: int = 16
    max_steps: int = 300
    val_every: int = 100
    val_size: int = 64
    seed: int = 0
    modules: list[str] | None = None
    grad_clip: float = 1.0
    include_prompt: bool = True
    max_length: int = 128
    precondition: str = "full"
    key_shrinkage: float = 0.1  # EditorConfig.key_shrinkage
    # "frobenius" (the paper's norm), "key" (the shift's effect on typical edit keys) or
    # "locality" (the norm mixed with the shift's effect on the batch's unrelated locality prompts)
    l2_metric: str = "frobenius"
    locality_weight: float = 0.5  # l2_metric="locality": weight of the locality part (the norm gets the rest)
    # EditorConfig.key_source: "corpus" fits each module's key moment on meta_train's ``preserve``
    key_source: str = "edits"
    live_weight: float = 0.0  # EditorConfig.live_weight: the solve's weight on live edits' keys
    # Serving conditions to train under: each step's solve also protects the keys of this many
    # other training edits (as if they were live; keys only, the model is not edited by them),
    # and the batch size is drawn from ``batch_sizes`` (None: always ``batch_size``).
    live_history: int = 0
    batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.reg not in REGULARISERS:
            raise ValueError(f"reg must be one of {REGULARISERS}, got {self.reg!r}")
        if self.l2_metric not in L2_METRICS:
            raise ValueError(f"l2_metric must be one of {L2_METRICS}, got {self.l2_metric!r}")
        if not 0.0 <= self.locality_weight <= 1.0:
            raise ValueError(f"locality_weight must be in [0, 1], got {self.locality_weight}")
        if self.n_steps < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise ValueError("n_steps and batch_size must be >= 1, max_steps >= 0")
        if self.live_history < 0 or (self.batch_sizes is not None and min(self.batch_sizes, default=0) < 1):
            raise ValueError("live_history must be >= 0 and every batch size >= 1")
        if self.key_source == "corpus" and self.precondition == "none":
            raise ValueError("key_source='corpus' fits a key moment, which precondition='none' (the plain ridge) "
                             "does not use: choose precondition='full' or 'diag'")
        if self.batch_sizes is not None:
            self.batch_sizes = tuple(int(b) for b in self.batch_sizes)

    def editor_config(self) -> EditorConfig:
        return EditorConfig(
            modules=self.modules,
            n_steps=self.n_steps,
            rank=self.rank,
            n_blocks=self.n_blocks,
            init_lr=self.init_lr or 1.0,
            max_length=self.max_length,
            precondition=self.precondition,
            key_shrinkage=self.key_shrinkage,
            key_source=self.key_source,
            live_weight=self.live_weight,
        )
