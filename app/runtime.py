"""The only module of the service that talks to ``editor_core``.

If the library's API moves, this file changes and nothing else does. ``ModelRuntime`` owns the model,
the editor and the ``WeightState`` (base weights + ordered active deltas), and serialises every
use of the model behind one re-entrant lock: inference never runs while a delta is half-applied,
and the worker can hold the lock across "materialise new state -> commit to DB -> mark live" so
that no request ever sees a version that is not (yet) committed.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from editor_core import scores
from editor_core.delta import Delta
from editor_core.editor import EditorConfig, SMEditor
from editor_core.models import load_model, model_fingerprint
from editor_core.state import WeightState
from editor_core.tokens import leading_ids, prompt_ids, split_pair
from editor_core.types import EditRequest, LocalityProbe

from app.row_tokens import RowTokens
from app.runtime_results import ContextTooLong, EditMeasure, GenerateResult, Measurement, ProbeResult

log = logging.getLogger("app.runtime")

__all__ = ["ContextTooLong", "Delta", "EditRequest", "LocalityProbe", "ModelRuntime", "EditMeasure", "GenerateResult", "Measurement", "ProbeResult"]


MIN_SAMPLING_TEMPERATURE = 1e-4


class ModelRuntime:
    """Base model + editor + weight state, with a live version number that waiters can block on."""

    def __init__(self, model_dir: str | Path, editor_dir: str | Path | None = None, device: str = "auto",
                 dtype: str | None = None, name: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name or "smedit"
        self.editor_dir = Path(editor_dir) if editor_dir else None
        t0 = time.perf_counter()
        self.model, self.tokenizer = load_model(self.model_dir, device=device, dtype=dtype)
        if self.editor_dir is not None:
            self.editor = SMEditor.load(self.editor_dir, self.model, self.tokenizer)
        else:
            log.warning("no editor checkpoint configured: using an UNTRAINED editor (edits will be weak)")
            self.editor = SMEditor(self.model, self.tokenizer, EditorConfig())
        self.module_names: list[str] = list(self.editor.module_names)
        self.fingerprint: str = model_fingerprint(self.model)
        self.editor_id: str = str(self.editor.editor_id)
        self.device = str(next(self.model.parameters()).device)
        self.dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        self.state = WeightState(self.model, self.module_names)
        self.lock = threading.RLock()
        self._version_cond = threading.Condition()
        self._progress = 0  # bumped after every job batch the local worker finishes
        self.live_version: int | None = None
        self.base_hash: str = self.state.weights_hash()
        self.live_hash: str | None = self.base_hash
        self.active_ids: list[int] = []
        self._submit_tokenizer, self._submit_lock = copy.deepcopy(self.tokenizer), threading.Lock()
        self.rows = RowTokens(lambda p: prompt_ids(self.tokenizer, p), lambda p, t: split_pair(self.tokenizer, p, t))
        config = self.model.config
        self.context: int | None = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.load_s = time.perf_counter() - t0

    def _check_context(self, n_tokens: int, field: str) -> None:
        """Inputs beyond the model's context would crash inside torch; say so as a field error."""
        if self.context is not None and n_tokens > self.context:
            raise ContextTooLong(field, f"needs {n_tokens} tokens; the model's context is {self.context}")

    # ---- deltas -----------------------------------------------------------------------------
    @staticmethod
    def delta_from_bytes(blob: bytes) -> Delta:
        return Delta.from_bytes(blob)

    @staticmethod
    def delta_to_bytes(delta: Delta) -> bytes:
        return delta.to_bytes()

    @staticmethod
    def delta_modules(delta: Delta) -> list[str]:
        return list(delta.module_names)

    def check_delta(self, delta: Delta) -> None:
        """Refuse a delta made for another base model (would silently corrupt the weights)."""
        made_for = delta.metadata.get("base_fingerprint")
        if made_for and made_for != self.editor.base_fingerprint:
            raise ValueError(f"delta was made for base model {made_for}, this one is {self.editor.base_fingerprint}")

    # ---- state ------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model: no inference runs until the block ends."""
        with self.lock:
            yield

    def set_state(self, deltas: Sequence[Delta], digest: bool = True) -> str | None:
        """Make the weights exactly base + deltas (in order) and return their hash (``digest``)."""
        with self.lock:
            self.state.set_active(list(deltas))
            return self.state.weights_hash() if digest else None

    def mark_live(self, version: int, active_ids: Sequence[int], weights_hash: str | None) -> None:
        """Announce locally that the current weights are ``version`` (wakes min_version waiters).

        ``weights_hash=None``: not computed yet (the caller hashes after waking the waiters)."""
        with self._version_cond:
            self.live_version = version
            self.active_ids = list(active_ids)
            self.live_hash = weights_hash
            self._version_cond.notify_all()

    def materialize(self, version: int, active: Sequence[tuple[int, Delta]]) -> str:
        """Switch to ``version`` = base + the given (id, delta) pairs; returns the weights hash.

        The version is marked live before its weights are hashed: waiters do not wait for the
        hash (tens of ms on a 100M model), and the weights cannot change in between (the lock)."""
        with self.lock:
            self.set_state([d for _, d in active], digest=False)
            self.mark_live(version, [i for i, _ in active], None)
            return self.record_live_hash()

    def record_live_hash(self) -> str:
        """Hash the live weights and remember it as the live version's hash."""
        with self.lock:
            digest = self.state.weights_hash()
            self.live_hash = digest
            return digest

    def weights_hash(self) -> str:
        with self.lock:
            return self.state.weights_hash()

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until ``live_version >= version`` or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._version_cond:
            while self.live_version is None or self.live_version < version:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._version_cond.wait(left)
            return True

    def progress(self) -> int:
        """A counter the local worker bumps after each batch of jobs (see ``wait_progress``)."""
        return self._progress

    def notify_progress(self) -> None:
        with self._version_cond:
            self._progress += 1
            self._version_cond.notify_all()

    def wait_progress(self, seen: int, timeout: float) -> None:
        """Block until the worker finished another batch since ``seen`` or a version went live, or
        ``timeout`` passes. Callers re-check what they wait for; waking early is harmless."""
        with self._version_cond:
            if self._progress == seen:
                self._version_cond.wait(timeout)

    # ---- editing ----------------------------------------------------------------------------
    def compute(self, requests: Sequence[EditRequest]) -> Delta:
        """The delta writing ``requests`` into the model as it is now (one batch, S steps).

        The live deltas are passed along: an editor with ``live_weight > 0`` protects their edits."""
        with self.lock:
            return self.editor.edit(list(requests), live=list(self.state.active))

    def base_answers(self, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Greedy answer ids of ``prompts`` on the base weights (the gate's reference), whatever
        state is live; the live state is rebuilt bit-exactly afterwards."""
        if not prompts:
            return []
        with self.lock:
            before = list(self.state.active)
            self.state.set_active([])
            try:
                return scores.greedy_token_ids(self.model, self.tokenizer, list(prompts), max_tokens)
            finally:
                self.state.set_active(before)

    def target_ids(self, prompt: str, target: str) -> list[int]:
        """The token ids ``target`` gets after ``prompt`` (what greedy decoding must produce)."""
        return split_pair(self.tokenizer, prompt, target)[1]

    def canaries_kept(self, prompts: Sequence[str], reference: Sequence[Sequence[int]]) -> list[bool]:
        """Per canary, whether greedy decoding on the current weights still gives ``reference``."""
        if not prompts:
            return []
        with self.lock:
            return scores.greedy_keeps(self.model, self.tokenizer, list(prompts), list(reference))

    def measure(
        self,
        requests: Sequence[EditRequest],
        candidate: Sequence[Delta],
        restore: Sequence[Delta] | None,
        canaries: Sequence[str] = (),
        canary_reference: Sequence[Sequence[int]] = (),
        recheck: Sequence[EditRequest] = (),
    ) -> Measurement:
        """Score each request on the weights ``base + candidate``, then go to ``base + restore``.

        ``restore=None`` leaves the candidate state in place (the worker about to commit it saves
        two rebuilds); it must put the committed state back itself if it does not commit. If
        measuring fails, the state before the call comes back. States are rebuilt from the fp32
        masters, so the live bits never drift. ``recheck``: live edits scored on the same state,
        in the same pass (``Measurement.recheck``).

        Everything is teacher-forced, in one forward pass (:func:`editor_core.scores.gate_scores`):
        "greedy decoding gives the target" (``es_gen``/``gs_gen``) holds exactly when every target
        token is the argmax given the tokens before it, and a canary keeps its answer exactly when
        its reference answer ids (end-of-text included) stay the argmax at every position.
        """
        requests, recheck = list(requests), list(recheck)
        t0 = time.perf_counter()
        with self.lock:
            before = list(self.state.active)
            # every request's locality probes in one batch, split back by request afterwards
            probes = [p for r in requests for p in r.locality]
            loc_ref = scores.locality_reference(self.model, self.tokenizer, probes) if probes else None
            self.state.set_active(list(candidate))
            try:
                per_edit, kept = scores.gate_scores(
                    self.model, self.tokenizer, requests + recheck, list(canaries), list(canary_reference),
                    canary_ids=[self.rows.prompt(c) for c in canaries], pair_ids=self.rows.pair,
                )
                per_probe = scores.locality_scores(self.model, self.tokenizer, probes, loc_ref) if loc_ref else []
            except BaseException:
                self.state.set_active(before)
                raise
            if restore is not None:
                self.state.set_active(list(restore))
        locality: list[float | None] = []
        cursor = 0
        for r in requests:
            k = len(r.locality)
            locality.append(_mean(per_probe[cursor : cursor + k]) if k else None)
            cursor += k
        locality += [None] * len(recheck)
        changed = [p for p, k in zip(canaries, kept) if not k]
        frac = len(changed) / len(canaries) if canaries else None
        measures = [
            EditMeasure(
                es=s.es, es_exact=s.es_exact, es_first=s.es_first, es_gen=s.es_exact,
                gs=s.gs, gs_exact=s.gs_exact, gs_gen=s.gs_exact, locality=loc,
                canary_changed=frac, canary_total=len(canaries), changed_canaries=changed[:10],
                gate_s=time.perf_counter() - t0, gs_first=s.gs_first,
                rows_exact=list(s.rows_exact), rows_first=list(s.rows_first),
            )
            for s, loc in zip(per_edit, locality)
        ]
        return Measurement(edits=measures[: len(requests)], canary_kept=kept, recheck=measures[len(requests) :])

    # ---- inference --------------------------------------------------------------------------
    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 0.0, stop: Sequence[str] = (), seed: int | None = None,
        streamer: Any | None = None,
    ) -> GenerateResult:
        """Greedy (temperature below 1e-4, its limit) or sampled continuation of ``prompt`` on the live version.

        ``streamer`` (a ``transformers`` streamer) receives the prompt ids, then each new token, while
        the lock is held: it sees exactly the version returned (used by the SSE endpoints).
        """
        with self.lock:
            version = self.live_version if self.live_version is not None else -1
            # As the editor and the gate read a prompt (no [SEP]-style end token appended).
            ids = torch.tensor([prompt_ids(self.tokenizer, prompt)], device=self.model.device)
            self._check_context(int(ids.shape[1]) + max_tokens, "max_tokens")
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_tokens,
                "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                "attention_mask": torch.ones_like(ids),
            }
            if temperature >= MIN_SAMPLING_TEMPERATURE:  # below it, logits / T overflow: greedy is its limit
                if seed is not None:
                    torch.manual_seed(seed)
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False)
            if streamer is not None:
                kwargs["streamer"] = streamer
            with torch.no_grad():
                out = self.model.generate(ids, **kwargs)
            new = out[0, ids.shape[1]:]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = len(text)
        for s in stop:
            idx = text.find(s)
            if s and idx != -1:
                cut = min(cut, idx)
        return GenerateResult(text=text[:cut], version=version, tokens=int(new.shape[0]))

    def probe(self, prompt: str, target: str) -> ProbeResult:
        """P(target | prompt) teacher forced, the rank of its first token, and greedy success."""
        with self.lock:
            version = self.live_version if self.live_version is not None else -1
            prompt_ids, target_ids = split_pair(self.tokenizer, prompt, target)
            self._check_context(len(prompt_ids) + len(target_ids), "prompt")
            ids = torch.tensor([prompt_ids + target_ids], device=self.model.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids).logits[0].float()
            logprobs = logits.log_softmax(-1)
            n = len(prompt_ids)
            positions = torch.arange(n - 1, n - 1 + len(target_ids), device=logits.device)
            tgt = torch.tensor(target_ids, device=logits.device)
            lp = float(logprobs[positions, tgt].sum())
            first = logprobs[n - 1]
            rank = int((first > first[target_ids[0]]).sum()) + 1
            answer = scores.greedy_answers(self.model, self.tokenizer, [prompt], len(target_ids))[0]
        greedy = " ".join(answer.split()).lower().startswith(" ".join(target.split()).lower())
        return ProbeResult(
            probability=math.exp(lp), logprob=lp, first_token_rank=rank, greedy=greedy,
            greedy_text=answer, version=version,
        )

    # ---- prompt and text helpers for serving layers (the OpenAI-compatible API) -----------
    @property
    def model_id(self) -> str:
        """The name clients see for the one served model (``Settings.served_model_name``)."""
        return self.name

    def count_prompt_tokens(self, prompt: str) -> int:
        """How many tokens ``generate`` feeds the model for ``prompt`` (usage, context room)."""
        with self.lock:  # fast tokenizers are not thread-safe
            return len(prompt_ids(self.tokenizer, prompt))

    def pair_tokens(self, prompt: str, answer: str) -> int:
        """How many positions ``prompt`` followed by ``answer`` takes (an edit's row, BOS included).

        On the submit path: a copy of the tokenizer with its own lock, so a submission never
        waits for the model lock the worker holds while it computes and commits."""
        with self._submit_lock:
            if not answer:  # a locality probe without an answer: the model's own is kept, unread
                return len(prompt_ids(self._submit_tokenizer, prompt))
            p, a = split_pair(self._submit_tokenizer, prompt, answer)
            return len(leading_ids(self._submit_tokenizer)) + len(p) + len(a)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated token ids as ``generate`` returns it (special tokens dropped), so a
        streamer decoding tokens as they come ends with the same text."""
        with self.lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer can render chat messages (read each time: it may be set later)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages`` with the assistant turn opened.

        ``generate`` tokenizes with the tokenizer's own special tokens, so a BOS the template
        writes itself is dropped when tokenizing would add it again. A template that refuses the
        messages (e.g. its role order) is a ``ValueError`` naming the reason.
        """
        with self.lock:
            tok = self.tokenizer
            try:
                text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - jinja errors from the model's own template
                raise ValueError(f"the model's chat template refused these messages: {exc}") from exc
            bos = getattr(tok, "bos_token", None)
            if bos and text.startswith(bos):
                ids = tok("x")["input_ids"]
                if ids and ids[0] == tok.bos_token_id:
                    text = text[len(bos):]
            return text

    def info(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir), "editor_dir": str(self.editor_dir) if self.editor_dir else None,
            "editor_id": self.editor_id, "base_fingerprint": self.fingerprint, "device": self.device,
            "dtype": self.dtype, "edited_modules": self.module_names, "live_version": self.live_version,
            "weights_hash": self.weights_hash(),  # recomputed from the bits, not remembered
            "active_deltas": self.active_ids,
        }


def make_request(prompt: str, target: str, paraphrases: Sequence[str] = (), locality: Sequence[dict[str, Any]] = ()) -> EditRequest:
    """Build the library's request type from stored (JSON) edit fields."""
    probes = tuple(LocalityProbe(p["prompt"], p.get("answer")) for p in locality)
    return EditRequest(prompt=prompt, target=target, paraphrases=tuple(paraphrases), locality=probes)


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None
