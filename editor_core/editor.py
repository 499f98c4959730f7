"""SMEdit: multi-step, hypernetwork-predicted weight edits solved by least squares.

``edit(requests)`` runs S steps. Each step captures keys and value gradients on the model *as
edited so far*, lets that step's hypernetworks turn them into value shifts, solves for the weight
shift per module, and applies it. The S shifts together form the returned ``Delta``; the model
itself is left exactly as it was. With S=1 (and KL training) this is MALMEN.

What the solve protects is per edited module (``key_moment.py``): a key moment of meta-training
edits or of a preservation corpus (``fit_key_moments``), plus, with ``live_weight > 0``, the
keys of the edits already live (``edit(requests, live=...)``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editor_core.arch import get_module, paper_modules, weight_shape
from editor_core.capture import Capture, capture_batch, concat_captures
from editor_core.checkpoint import pack_moments, per_module_moments, unpack_moments
from editor_core.delta import Delta
from editor_core.hypernet import HyperNet
from editor_core.key_moment import KEY_SOURCES, KeyMoment, LivePrecision, keys_only_delta
from editor_core.models import model_fingerprint
from editor_core.solve import Shift, solve_shift
from editor_core.tokens import pair_batch
from editor_core.types import EditRequest
from editor_core.working_copy import WorkingCopies

CHECKPOINT_FORMAT = "smedit-editor-1"


class CheckpointMismatchError(ValueError):
    """An editor checkpoint was trained for a different base model or module set."""


@dataclass
class EditorConfig:
    """Shape of the editor. ``rank`` is step 1's; step i (0-based) gets ``rank // (i + 1)``."""

    modules: list[str] | None = None
    n_steps: int = 2
    rank: int = 64
    n_blocks: int = 2
    init_lr: float = 1e-3
    edit_batch_size: int = 32
    token_chunk: int = 4096
    max_length: int = 128
    precondition: str = "full"  # key-covariance ridge: full, diag (huge d_in) or none (MALMEN)
    # share of the identity in the ridge's key covariance (1 = MALMEN's plain ridge); the demo's
    # SMEdit editor uses 0.03 (bench/README.md); checkpoints saved before the field load with 0.1
    key_shrinkage: float = 0.1
    # where the ridge's key moment comes from: "edits" (meta-training edit keys) or "corpus"
    # (fit_key_moments on what the model knows, frozen)
    key_source: str = "edits"
    # μ: how much a live edit's keys weigh against a new edit's in the solve (0: not protected)
    live_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.key_source not in KEY_SOURCES:
            raise ValueError(f"key_source must be one of {KEY_SOURCES}, got {self.key_source!r}")
        if self.live_weight < 0:
            raise ValueError(f"live_weight must be >= 0, got {self.live_weight}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EditorConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StepRecord:
    """What one step computed: its captures, value shifts and solved shifts, and the applied delta.

    ``live`` holds each module's precision while edits were live (training re-solves with it)."""

    captures: dict[str, Capture]
    value_diffs: dict[str, torch.Tensor]
    delta: Delta
    live: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _shape_key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


class SMEditor(nn.Module):
    """The editor: per step, one ``HyperNet`` per edited weight shape."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: EditorConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or EditorConfig()
        if self.config.n_steps < 1:
            raise ValueError("n_steps must be at least 1")
        # The model is not a submodule: the editor's state_dict must hold only the editor.
        object.__setattr__(self, "model", model)
        self.tokenizer = tokenizer
        self.module_names: list[str] = list(self.config.modules or paper_modules(model))
        self.config.modules = list(self.module_names)
        # Where an edit's captures wait while the other chunks and modules are computed: None is
        # the model's device; "cpu" offloads them (keys and gradients of every edited token, for
        # every module: ~20 GB for 10k facts at 7B), and each module's come back for its solve.
        # Not a property of the editor (not in its config or id); edit() only, not meta-training.
        self.capture_device: torch.device | str | None = None
        self._copies = WorkingCopies(model, self.module_names)

        groups: dict[str, list[str]] = {}
        shapes: dict[str, tuple[int, int]] = {}
        for name in self.module_names:
            shape = weight_shape(get_module(model, name))
            key = _shape_key(shape)
            shapes[key] = shape
            groups.setdefault(key, []).append(name)
        self.slots: dict[str, tuple[str, int]] = {
            name: (key, idx) for key, names in groups.items() for idx, name in enumerate(names)
        }
        cfg = self.config
        self.nets = nn.ModuleList(
            nn.ModuleDict(
                {
                    key: HyperNet(d_in, d_out, max(1, cfg.rank // (step + 1)), cfg.n_blocks, len(groups[key]),
                                  cfg.init_lr)
                    for key, (d_in, d_out) in shapes.items()
                }
            )
            for step in range(cfg.n_steps)
        )
        # one per edited module, shared by the S steps, in module_names order
        self.key_moments = nn.ModuleList(
            KeyMoment(shapes[self.slots[name][0]][0], cfg.precondition, cfg.key_shrinkage) for name in self.module_names
        )
        self._live = LivePrecision()
        self.to(self.device)
        self._fingerprint: str | None = None
        self.editor_id: str = "untrained"

    # ---- identity -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def base_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def compute_editor_id(self) -> str:
        """Digest of what decides the edits: the weights and the settings not stored in them."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def net_for(self, step: int, name: str) -> tuple[HyperNet, int]:
        key, idx = self.slots[name]
        return self.nets[step][key], idx

    def key_moment(self, name: str) -> KeyMoment:
        return self.key_moments[self.module_names.index(name)]

    def update_stats(self, step: int, captures: dict[str, Capture]) -> None:
        """Feed one step's captures to its normalisers and (source "edits") the key moments."""
        for name, cap in captures.items():
            self.net_for(step, name)[0].update_stats(cap.keys, cap.grads)
            if self.config.key_source == "edits":
                self.key_moment(name).update(cap.keys)

    @torch.no_grad()
    def fit_key_moments(self, requests: Sequence[EditRequest]) -> None:
        """Fit each module's key moment on what the model knows and freeze it (``key_source="corpus"``).

        ``requests`` are facts the model already gives (prompt, its answer): their keys at the
        answer positions, on this model, are what later edits must leave alone (MEMIT's ``C0``).
        """
        keys = keys_only_delta(self.model, self.tokenizer, self.module_names, list(requests),
                               self.config.max_length, self.config.edit_batch_size).keys
        for name in self.module_names:
            self.key_moment(name).fit([keys[name]] if name in keys else [])
        self.config.key_source = "corpus"

    def live_precisions(self, step: int, live: Sequence[Delta]) -> dict[str, torch.Tensor]:
        """Per module, ``(C + (μ / e^λ) Σ_live KᵢᵀKᵢ)⁻¹``: the solve that leaves live edits alone."""
        mu = self.config.live_weight
        if mu <= 0 or not any(d.keys for d in live):
            return {}
        out = {}
        for name in self.module_names:
            net, idx = self.net_for(step, name)
            alpha = mu / float(net.ridge_log(idx).detach().double().exp())
            out[name] = self._live.get(step, name, self.key_moment(name), alpha, live)
        return out

    # ---- the algorithm ------------------------------------------------------------------
    def capture(self, requests: Sequence[EditRequest]) -> dict[str, Capture]:
        """Keys and value gradients of all requests, computed chunk by chunk to bound memory."""
        parts = []
        for chunk in _chunks(list(requests), self.config.edit_batch_size):
            batch = pair_batch(
                self.tokenizer,
                [r.prompt for r in chunk],
                [r.target for r in chunk],
                self.config.max_length,
            )
            part = capture_batch(self.model, self.module_names, batch)
            if self.capture_device is not None:
                part = {n: Capture(c.keys.to(self.capture_device), c.grads.to(self.capture_device)) for n, c in part.items()}
            parts.append(part)
        return concat_captures(parts)

    def value_diffs(self, step: int, name: str, cap: Capture) -> torch.Tensor:
        """The hypernetwork's value shifts for one module, token chunk by token chunk."""
        net, idx = self.net_for(step, name)
        size = self.config.token_chunk
        return torch.cat(
            [
                net.value_diffs(cap.keys[i : i + size], cap.grads[i : i + size], idx)
                for i in range(0, cap.keys.shape[0], size)
            ]
        )

    def solve(
        self, step: int, name: str, keys: torch.Tensor, value_diffs: torch.Tensor,
        live_precision: torch.Tensor | None = None,
    ) -> Shift:
        """Solve one module's shift; ``live_precision`` replaces ``C⁻¹`` while edits are live."""
        net, idx = self.net_for(step, name)
        if live_precision is not None:
            precision = live_precision.to(keys.dtype)
        else:
            precision = self.key_moment(name).precision(keys.dtype)
        return solve_shift(keys, value_diffs, net.ridge_log(idx), precision)

    def run_steps(
        self,
        requests: Sequence[EditRequest],
        update_stats: bool = False,
        progress: bool = False,
        live: Sequence[Delta] = (),
    ) -> list[StepRecord]:
        """Run the S steps inside ``with editor.working_copies():``, leaving every step's shift
        added to the working copies.

        The caller reverts them (``revert_steps``). ``update_stats`` feeds the captures to the
        normalisers, which only meta-training does. ``live``: deltas already applied to the model
        whose recorded keys the solve protects (``config.live_weight``).
        """
        if not self._copies.active:
            raise RuntimeError("run_steps() runs inside `with editor.working_copies():` (edit() opens it)")
        records: list[StepRecord] = []
        try:
            for step in tqdm(range(self.config.n_steps), desc="edit steps", disable=not progress):
                captures = self.capture(requests)
                value_diffs: dict[str, torch.Tensor] = {}
                shifts: dict[str, Shift] = {}
                with torch.no_grad():
                    if update_stats:  # all modules first: they may share one normaliser
                        self.update_stats(step, captures)
                    live_precisions = self.live_precisions(step, live)
                    for name, cap in captures.items():
                        cap = Capture(cap.keys.to(self.device), cap.grads.to(self.device))  # back, if offloaded
                        value_diffs[name] = self.value_diffs(step, name, cap)
                        shifts[name] = self.solve(step, name, cap.keys, value_diffs[name], live_precisions.get(name))
                        if self.capture_device is not None:
                            value_diffs[name] = value_diffs[name].to(self.capture_device)
                delta = Delta(shifts)
                for name in shifts:
                    self._copies.add_(name, delta.dense(name))
                records.append(StepRecord(captures, value_diffs, delta, live_precisions))
        except BaseException:
            self.revert_steps(records)
            raise
        return records

    def working_copies(self) -> WorkingCopies:
        """fp32 copies of the edited modules while steps run (``working_copy.py``): exact steps on
        bf16/fp16 models, no per-step backups; the model's own weights are untouched."""
        return self._copies

    def revert_steps(self, records: list[StepRecord]) -> None:
        """Undo ``run_steps``: the working copies back to the original weights."""
        if records:
            self._copies.reset()

    def metadata(self) -> dict[str, str]:
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return {
            "base_fingerprint": self.base_fingerprint,
            "editor_id": self.editor_id,
            "dtype": dtype,
            "n_steps": str(self.config.n_steps),
        }

    def edit(self, requests: Sequence[EditRequest], progress: bool = False, live: Sequence[Delta] = ()) -> Delta:
        """Compute the delta that writes ``requests`` into the model; the model is left unchanged.

        ``live``: the deltas the model currently has applied, in order; with
        ``config.live_weight > 0`` the solve leaves their edits' outputs alone. The returned delta
        records its own keys (step 1's, on the model as it is) for later edits to protect.
        """
        requests = list(requests)
        if not requests:
            return Delta.empty(self.metadata())
        was_training = self.model.training
        self.model.eval()
        records: list[StepRecord] = []
        nested = self._copies.active  # inside an outer block the copies outlive this edit
        try:
            with self.working_copies():
                try:
                    records = self.run_steps(requests, progress=progress, live=live)
                finally:
                    if nested:  # otherwise leaving the block discards the copies: no reset needed
                        self.revert_steps(records)
        finally:
            self.model.train(was_training)
        meta = self.metadata()
        meta["n_requests"] = str(len(requests))
        delta = Delta.merge([r.delta for r in records], meta)
        delta.keys = {name: cap.keys.detach().float().cpu() for name, cap in records[0].captures.items()}
        return delta

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write ``editor.safetensors`` + ``editor.json`` (config, base fingerprint, editor id)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.editor_id = self.compute_editor_id()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        packed = pack_moments(state)
        save_file(state, out / "editor.safetensors")
        info = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "base_fingerprint": self.base_fingerprint,
            "editor_id": self.editor_id,
            **({"packed_moments": packed} if packed else {}),
            **(extra or {}),
        }
        (out / "editor.json").write_text(json.dumps(info, indent=2))
        return out

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        check_fingerprint: bool = True,
    ) -> "SMEditor":
        """Load a checkpoint; refuses one trained for another base model."""
        path = Path(path)
        info_path = path / "editor.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{path} is not an editor checkpoint (no editor.json)")
        info = json.loads(info_path.read_text())
        if info.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(f"{path}: unknown checkpoint format {info.get('format')!r}")
        editor = cls(model, tokenizer, EditorConfig.from_dict(info["config"]))
        if check_fingerprint and info["base_fingerprint"] != editor.base_fingerprint:
            raise CheckpointMismatchError(
                f"editor checkpoint {path} was trained for base model {info['base_fingerprint']}, "
                f"but the loaded model is {editor.base_fingerprint}; train an editor for this model "
                "(smedit train-editor) or load the model it was trained for"
            )
        state = load_file(path / "editor.safetensors", device=str(editor.device))
        state = per_module_moments(unpack_moments(state, info.get("packed_moments", [])), editor)
        editor.load_state_dict(state)
        editor.editor_id = info["editor_id"]
        return editor
