"""SMEdit: multi-step, hypernetwork-predicted weight edits solved by least squares.

``edit(requests)`` runs S steps. Each step captures keys and value gradients on the model *as
edited so far*, lets that step's hypernetworks turn them into value shifts, solves for the weight
shift per module, and applies it. The S shifts together form the returned ``Delta``; the model
itself is left exactly as it was. With S=1 (and KL training) this is MALMEN.
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

from editor_core.arch import default_modules, get_module, weight_shape
from editor_core.capture import Capture, capture_batch, concat_captures
from editor_core.delta import Delta
from editor_core.hypernet import HyperNet
from editor_core.models import model_fingerprint
from editor_core.solve import Shift, solve_shift
from editor_core.tokens import pair_batch
from editor_core.types import EditRequest

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EditorConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StepRecord:
    """What one step computed: its captures, value shifts and solved shifts, and the applied delta."""

    captures: dict[str, Capture]
    value_diffs: dict[str, torch.Tensor]
    delta: Delta
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
        self.module_names: list[str] = list(self.config.modules or default_modules(model))
        self.config.modules = list(self.module_names)

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
                                  cfg.init_lr, cfg.precondition, cfg.key_shrinkage)
                    for key, (d_in, d_out) in shapes.items()
                }
            )
            for step in range(cfg.n_steps)
        )
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
            parts.append(capture_batch(self.model, self.module_names, batch))
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

    def solve(self, step: int, name: str, keys: torch.Tensor, value_diffs: torch.Tensor) -> Shift:
        net, idx = self.net_for(step, name)
        return solve_shift(keys, value_diffs, net.ridge_log(idx), net.key_moment.precision(keys.dtype))

    def run_steps(
        self, requests: Sequence[EditRequest], update_stats: bool = False, progress: bool = False
    ) -> list[StepRecord]:
        """Run the S steps, leaving every step's delta applied to the model.

        The caller reverts them (``revert_steps``). ``update_stats`` feeds the captures to the
        normalisers, which only meta-training does.
        """
        records: list[StepRecord] = []
        try:
            for step in tqdm(range(self.config.n_steps), desc="edit steps", disable=not progress):
                captures = self.capture(requests)
                value_diffs: dict[str, torch.Tensor] = {}
                shifts: dict[str, Shift] = {}
                with torch.no_grad():
                    if update_stats:  # all modules first: they may share one normaliser
                        for name, cap in captures.items():
                            self.net_for(step, name)[0].update_stats(cap.keys, cap.grads)
                    for name, cap in captures.items():
                        value_diffs[name] = self.value_diffs(step, name, cap)
                        shifts[name] = self.solve(step, name, cap.keys, value_diffs[name])
                delta = Delta(shifts)
                delta.apply_(self.model)
                records.append(StepRecord(captures, value_diffs, delta))
        except BaseException:
            self.revert_steps(records)
            raise
        return records

    def revert_steps(self, records: list[StepRecord]) -> None:
        for record in reversed(records):
            if record.delta.applied:
                record.delta.revert_(self.model)

    def metadata(self) -> dict[str, str]:
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return {
            "base_fingerprint": self.base_fingerprint,
            "editor_id": self.editor_id,
            "dtype": dtype,
            "n_steps": str(self.config.n_steps),
        }

    def edit(self, requests: Sequence[EditRequest], progress: bool = False) -> Delta:
        """Compute the delta that writes ``requests`` into the model; the model is left unchanged."""
        requests = list(requests)
        if not requests:
            return Delta.empty(self.metadata())
        was_training = self.model.training
        self.model.eval()
        records: list[StepRecord] = []
        try:
            records = self.run_steps(requests, progress=progress)
        finally:
            self.revert_steps(records)
            self.model.train(was_training)
        meta = self.metadata()
        meta["n_requests"] = str(len(requests))
        return Delta.merge([r.delta for r in records], meta)

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write ``editor.safetensors`` + ``editor.json`` (config, base fingerprint, editor id)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.editor_id = self.compute_editor_id()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, out / "editor.safetensors")
        info = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "base_fingerprint": self.base_fingerprint,
            "editor_id": self.editor_id,
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
        editor.load_state_dict(state)
        editor.editor_id = info["editor_id"]
        return editor
