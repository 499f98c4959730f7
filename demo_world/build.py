"""Build the demo: a generated world, a small LM trained to know it, and editors trained on it.

Everything goes into ``data_dir / "demo" / size``::

    world.json          the World (facts, phrasings, splits) -- World.load(path)
    model/              Hugging Face dir (safetensors + tokenizer + pretrain_stats.json)
    editor/             SMEdit checkpoint (smedit_config: L2, S=2; "small" protects its corpus and live edits, S=3)
    editor_malmen/      MALMEN checkpoint (TrainConfig(n_steps=1, reg="kl")), when trained
    stats.json          world summary, pretraining stats, how well each phrasing role is known
    canaries.txt        the gate's canary prompts, one per line (the service's SMEDIT_CANARY_FILE)
    stamp.json          the inputs of the build; written last

The build is cached: if ``stamp.json`` matches the inputs, :func:`build_demo` returns at once.
World and model are built in a temporary sibling directory that is renamed into place only when
complete, so a crash never leaves a half-built model that looks finished; the editors are then
trained into the finished demo and the stamp records them last, so a failure there costs only the
editors on the next call, never the pretraining. A lock file keeps two
processes from building the same size at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from demo_world.pretrain import PretrainConfig, answer_hits, pretrain_lm
from demo_world.world import WORLD_FORMAT_VERSION, World, generate_world
from editor_core.hypernet import TRAINING_VERSION
from editor_core.types import EditRequest

DEMO_VERSION = "1"  # bump when a change in world/pretrain code should invalidate built demos
DEFAULT_SPLIT = (0.6, 0.2, 0.2)  # generate_world's train / eval / locality shares of the products


@dataclass(frozen=True)
class DemoSize:
    n_products: int
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT  # train / eval / locality products
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    val_fraction: float = 0.1  # share of train entities held out as editor validation edits
    editor_steps: int = 200  # meta-training steps per editor
    # Layers whose MLP output the demo editors edit; None: the library default (the upper half).
    # A 2-layer model edited in its last layer alone reaches 38% greedy edit success, in both 90%.
    # The 4-layer "small" one edited in all 4 gains a few points of one-shot ES (bench.quality
    # --edit-layers 4) but loses them in the service, where edits pile up: after ~300 edits the gate
    # rejected 35 of 256 (vs 1) and micro-batching fell from 3.1x to 1.1x (bench.serving).
    edit_layers: int | None = None
    # The SMEdit editor's L2 regulariser: coefficient, metric and locality weight (TrainConfig).
    editor_reg: float = 1e-3
    editor_l2_metric: str = "frobenius"
    editor_locality_weight: float = 0.5
    editor_key_shrinkage: float = 0.1  # the SMEdit editor's EditorConfig.key_shrinkage
    # What the SMEdit editor's solve protects (bench.lifelong): key moments fitted on a sample of
    # the world's corpus (key_source="corpus"), live edits' keys with this weight, trained as if
    # ``editor_live_history`` edits were live (batch sizes 1/4/16).
    editor_preserve: bool = False
    editor_live_weight: float = 0.0
    editor_live_history: int = 0
    # the protected editor's own recipe, where it differs from the unprotected one above (None: same)
    editor_protected_shrinkage: float | None = None
    editor_protected_steps: int | None = None  # edit steps S
    editor_protected_train_steps: int | None = None  # meta-training steps


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(n_products=40, pretrain=PretrainConfig.preset("tiny"), editor_steps=60, edit_layers=2),
    # n=16, 7 seeds (bench/README.md): ES .973, GS .959, LS other .988, same .969; the paper's
    # plain norm at reg 1e-3 gave .91 / .90 / .99 / .98 (key shrinkage 0.1, old calibration)
    # The SMEdit editor protects what the model knows and the live edits (bench.lifelong, chosen on
    # the dev split: S=3, corpus key moments with shrinkage 0.005, live weight 1, trained as if
    # 128 edits were live, 400 steps), confirmed by `smedit tune` on the same dev split (2026-12-08:
    # 54 trials, this recipe closest to ES .93 / GS .90 / LS .97 at 128 live edits; bench/README.md,
    # "The demo editor, chosen by smedit tune"); the fields before editor_preserve are the unprotected
    # recipe (the lifelong bench's "stacking" reference, and what the MALMEN editor shares).
    "small": DemoSize(n_products=300, pretrain=PretrainConfig.preset("small"), editor_reg=5e-4,
                      editor_l2_metric="locality", editor_locality_weight=0.9, editor_key_shrinkage=0.03,
                      editor_preserve=True, editor_live_weight=1.0, editor_live_history=128,
                      editor_protected_shrinkage=0.005, editor_protected_steps=3, editor_protected_train_steps=400),
    # Benchmark-only (bench.lifelong --size wide, issue 19's larger base): 700 products (5,600
    # facts), 40 % of them eval entities so the test split holds 1,680 edits and a 1,000-edit
    # curve fits; twice as wide as "small" (edited MLP outputs read 1,024 inputs); the small
    # demo's editor recipes unchanged (nothing tuned on this base).
    "wide": DemoSize(n_products=700, split_fractions=(0.4, 0.4, 0.2), pretrain=PretrainConfig.preset("wide"),
                     editor_reg=5e-4, editor_l2_metric="locality", editor_locality_weight=0.9,
                     editor_key_shrinkage=0.03, editor_preserve=True, editor_live_weight=1.0,
                     editor_live_history=128, editor_protected_shrinkage=0.005, editor_protected_steps=3,
                     editor_protected_train_steps=400),
}


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    world_json: Path
    model_dir: Path
    editor_dir: Path
    malmen_dir: Path
    stats_json: Path
    stamp_json: Path
    canary_file: Path  # one prompt per line: what the service's gate checks (SMEDIT_CANARY_FILE)

    @property
    def has_editors(self) -> bool:
        return self.editor_dir.is_dir() and self.malmen_dir.is_dir()

    def load_world(self) -> World:
        return World.load(self.world_json)

    def stats(self) -> dict:
        return json.loads(self.stats_json.read_text())


def demo_paths(data_dir: str | Path, size: str = "small") -> DemoPaths:
    """Where :func:`build_demo` puts (or has put) the demo of ``size``; builds nothing."""
    return _layout(Path(data_dir) / "demo" / size)


def _layout(root: Path) -> DemoPaths:
    return DemoPaths(
        root=root,
        world_json=root / "world.json",
        model_dir=root / "model",
        editor_dir=root / "editor",
        malmen_dir=root / "editor_malmen",
        stats_json=root / "stats.json",
        stamp_json=root / "stamp.json",
        canary_file=root / "canaries.txt",
    )


def _stamp_key(size: str, seed: int, spec: DemoSize) -> dict:
    return {
        "size": size,
        "seed": seed,
        "version": DEMO_VERSION,
        "world_format": WORLD_FORMAT_VERSION,
        "n_products": spec.n_products,
        "pretrain": asdict(spec.pretrain),
        "val_fraction": spec.val_fraction,
        # only where it differs from the default, so demos built before the field stay valid
        **({"split_fractions": list(spec.split_fractions)} if tuple(spec.split_fractions) != DEFAULT_SPLIT else {}),
    }


def _editor_key(spec: DemoSize) -> dict:
    """What the demo editors were trained with: other settings retrain them, not the model."""
    key = {"steps": spec.editor_steps, "edit_layers": spec.edit_layers, "training": TRAINING_VERSION,
           "malmen": "plain ridge"}
    reg = [spec.editor_reg, spec.editor_l2_metric, spec.editor_locality_weight]
    if reg != [1e-3, "frobenius", 0.5]:  # keys of earlier builds unchanged
        key["reg"] = reg
    if spec.editor_key_shrinkage != 0.1:
        key["key_shrinkage"] = spec.editor_key_shrinkage
    protect = [spec.editor_preserve, spec.editor_live_weight, spec.editor_live_history,
               spec.editor_protected_shrinkage, spec.editor_protected_steps, spec.editor_protected_train_steps]
    if protect != [False, 0.0, 0, None, None, None]:
        key["protect"] = protect
    return key


PRESERVE_SAMPLE = 4096  # corpus facts the protected editor's key moments are fitted on


def preservation_requests(world: World, seed: int = 0, n: int = PRESERVE_SAMPLE) -> list[EditRequest]:
    """What the base model knows, as (prompt, its answer): a seeded sample of the pretraining
    corpus, the preservation set an editor's key moments are fitted on (``fit_key_moments``)."""
    pairs = world.pretraining_pairs()
    pairs = random.Random(seed).sample(pairs, min(n, len(pairs)))
    return [EditRequest(prompt=p, target=a) for p, a in pairs]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_demo(
    data_dir: str | Path,
    size: str = "small",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    train_editor: bool = True,
    comparison: bool = True,
) -> DemoPaths:
    """Build (or reuse) the demo world, base model and editors; return where they are.

    Cached on (size, seed, :data:`DEMO_VERSION`, the size's settings): a matching stamp returns
    immediately. A demo built with ``train_editor=False`` is reused by a later call with
    ``train_editor=True``; only the editors are trained then. ``comparison=False`` trains only
    the SMEdit editor the service uses, not the MALMEN editor the benchmarks compare against (a
    later call with ``comparison=True`` adds it). ``force`` rebuilds everything.
    """
    if size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {size!r}; use one of {sorted(DEMO_SIZES)}")
    spec = DEMO_SIZES[size]
    paths = demo_paths(data_dir, size)
    parent = paths.root.parent
    key = _stamp_key(size, seed, spec)

    with _lock(parent / f".{size}.lock"):
        for stale in parent.glob(f".{size}.build-*"):  # left by a crashed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".{size}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)

        stamp = None if force else _read_json(paths.stamp_json)
        if stamp is not None and stamp.get("key") == key and paths.model_dir.is_dir():
            _write_canary_file(paths)  # demos built before the file existed get it now
            _write_chat_template(paths.model_dir)  # likewise the chat template
            missing = _missing_editors(stamp, spec, comparison) if train_editor else []
            if missing:
                _add_editors(paths, spec, seed, progress, missing)
            return paths

        tmp_root = Path(tempfile.mkdtemp(prefix=f".{size}.build-", dir=parent))
        os.chmod(tmp_root, 0o755)  # mkdtemp makes it private; the finished demo should not be
        try:
            # World and model land first (stamped "no editors"): a failure while training the
            # editors then costs only the editors on the next call, not the pretraining.
            _build_world_and_model(_layout(tmp_root), key, spec, seed, progress)
            if paths.root.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{size}.old-", dir=parent))
                os.replace(paths.root, old / "demo")
                os.replace(tmp_root, paths.root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp_root, paths.root)
        except BaseException:
            shutil.rmtree(tmp_root, ignore_errors=True)
            raise
        if train_editor:
            _add_editors(paths, spec, seed, progress, list(EDITORS if comparison else EDITORS[:1]))
    return paths


EDITORS = ("smedit", "malmen")  # the service's editor, then the benchmarks' MALMEN comparison


def _missing_editors(stamp: dict, spec: DemoSize, comparison: bool) -> list[str]:
    """The editors still to train: all on other editor settings, else those not trained yet
    (stamps from before ``trained`` existed had both)."""
    wanted = list(EDITORS if comparison else EDITORS[:1])
    if stamp.get("editors") != _editor_key(spec):
        return wanted
    have = stamp.get("trained", list(EDITORS))
    return [name for name in wanted if name not in have]


N_CANARIES = 128


def _phase(progress: bool, message: str) -> None:
    """A build phase's heading above its progress bar (tqdm shows the rate and time left)."""
    if progress:
        print(f"==> {message}", file=sys.stderr, flush=True)


def _write_canary_file(paths: DemoPaths) -> None:
    """The gate's canaries as a user would provide them: facts the demo model knows, one per line
    (a demo built when there were 16 gets the larger set)."""
    have = len(paths.canary_file.read_text().splitlines()) if paths.canary_file.is_file() else 0
    if have >= N_CANARIES:
        return
    world = paths.load_world()
    wanted = min(N_CANARIES, len(world.splits["locality"]) * len(world.relation_names))
    if have >= wanted:
        return
    prompts = [p.prompt for p in world.canary_prompts(wanted)]
    tmp = paths.canary_file.with_suffix(".tmp")
    tmp.write_text("".join(p + "\n" for p in prompts))
    os.replace(tmp, paths.canary_file)


# The demo model completes facts ("The Zentrix X2 costs" -> " 49 dollars"); it was never taught a
# dialogue format. Its chat template is therefore plain text: the turns joined by newlines (an
# assistant turn follows its question after a space, as an answer follows its prompt), so a chat
# whose last message is a fact's prompt gets the same answer as a completion of that prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{ ' ' if message['role'] == 'assistant' else '\n' }}{%- endif -%}"
    "{{- message['content'] | trim -}}"
    "{%- endfor -%}"
)


def _write_chat_template(model_dir: Path) -> None:
    """Put :data:`CHAT_TEMPLATE` in the tokenizer's config (what ``apply_chat_template`` reads),
    unless the config already has it; the weights are not touched."""
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("chat_template") == CHAT_TEMPLATE:
        return
    config["chat_template"] = CHAT_TEMPLATE
    _write_json_atomic(config_file, config)


def measure_knowledge(model, tokenizer, world: World) -> dict:
    """Answer exact match per phrasing role; ``anchor_other_entities`` is the generalisation test.

    ``anchor_eval_split`` equals the anchor phrasing on entities that never saw it in the eval
    split (eval entities are never anchors).
    """
    hits: dict[str, dict[str, list[bool]]] = {}
    for role in ("seen", "anchor", "unseen"):
        per_entity: dict[str, list[bool]] = {}
        for entity in world.entities:
            per_entity[entity] = []
        pairs = [(e, pair) for e in world.entities for pair in world.qa_pairs(role, [e])]
        for (entity, _), hit in zip(pairs, answer_hits(model, tokenizer, [p for _, p in pairs])):
            per_entity[entity].append(hit)
        hits[role] = per_entity

    def acc(role: str, entities) -> float:
        values = [h for e in entities for h in hits[role][e]]
        return sum(values) / len(values) if values else float("nan")

    others = [e for e in world.entities if not world.is_anchor(e)]
    return {
        "seen": acc("seen", world.entities),
        "anchor_anchor_entities": acc("anchor", world.anchor_entities),
        "anchor_other_entities": acc("anchor", others),
        "unseen": acc("unseen", world.entities),
        "seen_eval_split": acc("seen", world.splits["eval"]),
        "anchor_eval_split": acc("anchor", world.splits["eval"]),
    }


def _build_world_and_model(paths: DemoPaths, key: dict, spec: DemoSize, seed: int, progress: bool) -> None:
    """World, pretrained model and stats, stamped as a demo without editors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    _phase(progress, f"demo {key['size']}: generating the world, then pretraining the base model")
    world = generate_world(seed=seed, n_products=spec.n_products, split_fractions=spec.split_fractions)
    world.save(paths.world_json)
    _write_canary_file(paths)
    pretrain_cfg = spec.pretrain
    pre_stats = pretrain_lm(world.pretraining_pairs(), paths.model_dir, pretrain_cfg, progress=progress,
                            eval_pairs=world.qa_pairs("seen"))
    _write_chat_template(paths.model_dir)
    model = AutoModelForCausalLM.from_pretrained(paths.model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(paths.model_dir, local_files_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(pre_stats.get("threads") or threads)  # what training found fastest
    try:
        knowledge = measure_knowledge(model, tokenizer, world)
    finally:
        torch.set_num_threads(threads)
    del model
    stats = {
        "size": key["size"],
        "seed": seed,
        "world": world.summary(),
        "pretrain": {k: v for k, v in pre_stats.items() if k != "config"},
        "knowledge": knowledge,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    _write_json_atomic(paths.stats_json, stats)
    _write_json_atomic(paths.stamp_json, {"key": key, "editors": None, "built_at": time.time()})


def _add_editors(paths: DemoPaths, spec: DemoSize, seed: int, progress: bool, names: list[str]) -> None:
    """Train the editors ``names`` into an already built demo, then mark it (stamp last)."""
    world = World.load(paths.world_json)
    stamp = _read_json(paths.stamp_json) or {}
    same_settings = stamp.get("editors") == _editor_key(spec)
    editors = _train_editors(paths, world, spec, seed, progress, names)
    stats = _read_json(paths.stats_json) or {}
    stats["editors"] = {**((stats.get("editors") or {}) if same_settings else {}), **editors}
    _write_json_atomic(paths.stats_json, stats)
    have = set(stamp.get("trained", EDITORS) if same_settings else ())
    stamp["editors"], stamp["trained"] = _editor_key(spec), [n for n in EDITORS if n in have | set(names)]
    _write_json_atomic(paths.stamp_json, stamp)


def _saved_config(run_dir: Path) -> dict | None:
    return (_read_json(run_dir / "editor.json") or {}).get("train_config")


def editor_requests(world: World, spec: DemoSize, seed: int):
    """Meta-training and validation edits: train-split entities, a held-out share for validation."""
    requests = world.edit_requests("train", seed=seed)
    train_entities = world.splits["train"]
    n_val = max(1, round(spec.val_fraction * len(train_entities)))
    val_entities = set(train_entities[-n_val:])
    train = [r for r in requests if r.meta["entity"] not in val_entities]
    val = [r for r in requests if r.meta["entity"] in val_entities]
    return train, val


def smedit_config(spec: DemoSize, max_steps: int, seed: int, modules: list[str] | None):
    """The demo's SMEdit editor: the spec's regulariser, and its protection recipe when it has one."""
    from editor_core.train import TrainConfig

    return TrainConfig(
        n_steps=spec.editor_protected_steps or 2, reg="l2", reg_coef=spec.editor_reg,
        l2_metric=spec.editor_l2_metric, locality_weight=spec.editor_locality_weight,
        key_shrinkage=spec.editor_protected_shrinkage or spec.editor_key_shrinkage,
        key_source="corpus" if spec.editor_preserve else "edits", live_weight=spec.editor_live_weight,
        live_history=spec.editor_live_history, batch_sizes=(1, 4, 16) if spec.editor_live_history else None,
        max_steps=spec.editor_protected_train_steps or max_steps, seed=seed, modules=modules,
    )


def _train_editors(paths: DemoPaths, world: World, spec: DemoSize, seed: int, progress: bool,
                   names: list[str]) -> dict:
    """Meta-train the editors ``names`` (SMEdit, MALMEN) on the world's train edits (each
    written via a temp dir)."""
    from editor_core.models import load_model
    from editor_core.train import TrainConfig, meta_train

    train, val = editor_requests(world, spec, seed)
    out: dict = {"train_requests": len(train), "val_requests": len(val)}
    modules = None
    if spec.edit_layers is not None:
        from editor_core.arch import last_layer_modules

        modules = last_layer_modules(load_model(paths.model_dir)[0], spec.edit_layers)
    common = dict(max_steps=spec.editor_steps, seed=seed, modules=modules)
    for name, target, config in (
        ("smedit", paths.editor_dir, smedit_config(spec, **common)),
        ("malmen", paths.malmen_dir, TrainConfig(n_steps=1, reg="kl", reg_coef=1.0, precondition="none",
                                                 key_shrinkage=1.0, **common)),  # MALMEN's plain ridge
    ):
        if name not in names:
            continue
        _phase(progress, f"demo: meta-training the {'SMEdit' if name == 'smedit' else 'MALMEN'} editor "
               f"({names.index(name) + 1} of {len(names)})")
        started = time.perf_counter()
        # Not cleared first: meta_train resumes a run of the same settings cut short.
        tmp = target.with_name(f".{target.name}.tmp")
        if (tmp / "editor.json").is_file() and _saved_config(tmp) != asdict(config):
            shutil.rmtree(tmp)
        model, tokenizer = load_model(paths.model_dir)  # fresh each time: training must not leak
        preserve = preservation_requests(world, seed) if name == "smedit" and spec.editor_preserve else None
        meta_train(model, tokenizer, train, val, config, tmp, progress=progress, preserve=preserve)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        out[name] = {"dir": target.name, "seconds": round(time.perf_counter() - started, 1)}
    return out
