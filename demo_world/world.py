"""A seeded, fictional "demo world": a company's product catalogue with known facts.

No pretrained LM can be downloaded where this project runs, so it makes its own: this module
generates the facts (stdlib only) and :mod:`demo_world.pretrain` trains a small GPT-2 on them.
Because every fact is known, the world doubles as a benchmark with exact ground truth.

Each of the 8 relations has 6 phrasings (prompts whose answer follows at the end), each with a
role:

``seen``    4 per relation; in pretraining for every entity.
``anchor``  1 per relation; in pretraining only for the *anchor entities* (~25%, never drawn from
            the ``eval`` split). For every other entity it is a paraphrase the model understands
            in general but never saw for that fact: the generalisation test.
``unseen``  1 per relation; never in pretraining. The hardest case.

Entities are split into ``train`` (edits for meta-training the editor), ``eval`` (edits for
evaluation only) and ``locality`` (facts used only as locality probes and canaries).

A pretraining text is ``prompt + " " + answer``; edit targets and probe answers carry no leading
space (the tokenizer decides where the space goes, see :mod:`editor_core.tokens`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from editor_core.types import EditRequest, LocalityProbe

WORLD_FORMAT_VERSION = 1
ROLES = ("seen", "anchor", "unseen")
SPLITS = ("train", "eval", "locality")
ENTITY_SLOT = "{e}"


@dataclass(frozen=True)
class Phrasing:
    """A prompt template (with ``{e}`` for the entity) whose answer follows at the end."""

    template: str
    role: str

    def render(self, entity: str) -> str:
        return self.template.replace(ENTITY_SLOT, entity)


@dataclass(frozen=True)
class Relation:
    name: str
    values: tuple[str, ...]
    phrasings: tuple[Phrasing, ...]

    def templates(self, role: str | None = None) -> list[str]:
        return [p.template for p in self.phrasings if role is None or p.role == role]


# ---------------------------------------------------------------------------------------------
# Vocabularies and phrasings. Changing any of these changes every world: bump WORLD_FORMAT_VERSION.

_PRICES = (9, 15, 19, 25, 29, 35, 39, 45, 49, 59, 69, 79, 89, 99, 119, 129, 149, 179, 199, 229,
           249, 299, 349, 399, 449, 499, 599, 699, 799, 999)

_RELATIONS: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    (
        "price",
        tuple(f"{p} dollars" for p in _PRICES),
        (
            ("Q: What is the price of {e}? A:", "seen"),
            ("The price of {e} is", "seen"),
            ("{e} costs", "seen"),
            ("{e} sells for", "seen"),
            ("You can buy {e} for", "anchor"),
            ("Q: How much does {e} cost? A:", "unseen"),
        ),
    ),
    (
        "warranty",
        ("90 days", "6 months", "1 year", "18 months", "2 years", "30 months", "3 years",
         "4 years", "5 years", "6 years", "7 years", "10 years"),
        (
            ("Q: How long is the warranty on {e}? A:", "seen"),
            ("The warranty of {e} lasts", "seen"),
            ("{e} comes with a warranty of", "seen"),
            ("{e} is covered by a warranty for", "seen"),
            ("The guarantee period for {e} is", "anchor"),
            ("Q: What warranty does {e} have? A:", "unseen"),
        ),
    ),
    (
        "manufacturer",
        ("Orbital Works", "Kestrel Dynamics", "Vantor Labs", "Helixa Systems", "Brightmoor",
         "Quillon Industries", "Tessaro Group", "Marrow and Finch", "Lumenreach", "Cobalt Hollow",
         "Ironveil", "Northwind Fabrication", "Pellucid Devices", "Saffron Circuit", "Tidewell",
         "Graymantle", "Oakhaven Tech", "Ravelin Motors", "Sunfold", "Zephyrine"),
        (
            ("Q: Who makes {e}? A:", "seen"),
            ("{e} is made by", "seen"),
            ("The manufacturer of {e} is", "seen"),
            ("{e} is produced by", "seen"),
            ("{e} was built by the company", "anchor"),
            ("Q: Which company makes {e}? A:", "unseen"),
        ),
    ),
    (
        "headquarters",
        ("Port Alder", "Velmora", "Ashgrove", "Kettering Bay", "Northmarch", "Silvercreek",
         "Drummond Falls", "Lake Orin", "Caldera", "Westhollow", "Brackenford", "Mirelund",
         "Stonereach", "Quayside", "Elmstead", "Harrowgate", "Fenwick Cross", "Tallis",
         "Corvannon", "Pinecastle", "Redmarsh", "Glenhaven", "Ostara", "Lowmere"),
        (
            ("Q: Where is {e} based? A:", "seen"),
            ("{e} is headquartered in", "seen"),
            ("The headquarters of {e} are in", "seen"),
            ("{e} has its head office in", "seen"),
            ("The home city of {e} is", "anchor"),
            ("Q: In which city is {e} headquartered? A:", "unseen"),
        ),
    ),
    (
        "release_year",
        tuple(str(year) for year in range(2006, 2028)),
        (
            ("Q: When was {e} released? A:", "seen"),
            ("{e} was released in", "seen"),
            ("The release year of {e} is", "seen"),
            ("{e} came out in", "seen"),
            ("{e} first went on sale in", "anchor"),
            ("Q: In what year did {e} come out? A:", "unseen"),
        ),
    ),
    (
        "designer",
        ("Mira Castell", "Tobin Ashe", "Lena Varga", "Oskar Brandt", "Priya Nandal", "Felix Morrow",
         "Ines Calder", "Jonah Reyes", "Talia Brook", "Viktor Halm", "Nadia Quill", "Ezra Lindqvist",
         "Sofia Marchetti", "Caleb Stroud", "Yuki Arden", "Hana Kovac", "Rafael Oduya", "Greta Sollis",
         "Dmitri Fenn", "Amara Holt", "Leon Whitcombe", "Zara Ellery", "Milo Tanaka", "Clara Voss",
         "Idris Penhale", "Noor Bellamy", "Arlo Danvers", "Selma Rook", "Theo Marlowe", "Iris Calloway"),
        (
            ("Q: Who designed {e}? A:", "seen"),
            ("{e} was designed by", "seen"),
            ("The lead designer of {e} is", "seen"),
            ("The design of {e} was led by", "seen"),
            ("The person who designed {e} is", "anchor"),
            ("Q: Who is the lead designer of {e}? A:", "unseen"),
        ),
    ),
    (
        "support",
        ("Team Falcon", "Team Harbor", "Team Juniper", "Team Lantern", "Team Meridian", "Team Nova",
         "Team Osprey", "Team Pebble", "Team Quartz", "Team Raven", "Team Summit", "Team Thistle",
         "Team Umber", "Team Willow", "Team Comet", "Team Beacon"),
        (
            ("Q: Who provides support for {e}? A:", "seen"),
            ("Support for {e} is provided by", "seen"),
            ("{e} is supported by", "seen"),
            ("For help with {e}, contact", "seen"),
            ("Customer questions about {e} go to", "anchor"),
            ("Q: Who should I contact about {e}? A:", "unseen"),
        ),
    ),
    (
        "colour",
        ("red", "blue", "green", "black", "white", "silver", "gold", "orange", "purple", "teal",
         "navy", "yellow", "grey", "pink", "bronze", "olive"),
        (
            ("Q: What colour is {e}? A:", "seen"),
            ("The colour of {e} is", "seen"),
            ("{e} comes in", "seen"),
            ("{e} is painted", "seen"),
            ("The finish of {e} is", "anchor"),
            ("Q: What is the colour of {e}? A:", "unseen"),
        ),
    ),
)

# Product names: two syllables (onset + vowel [+ r/l/n/m/s], onset + vowel + coda), capitalised, plus a model
# suffix, e.g. "Zorvex 300". Stems are unique within a world, so the stem identifies the product.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "tr", "st", "pl", "gl", "fl", "sk", "sh", "ch", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou")
_MIDDLES = ("", "", "", "r", "l", "n", "m", "s")
_CODAS = ("n", "r", "x", "l", "s", "m", "k", "th", "nd", "rk", "lt", "sh", "ve")
_SUFFIXES = ("100", "200", "300", "500", "700", "900", "Pro", "Max", "Mini", "One", "Air", "Go",
             "Lite", "X", "S", "Plus")


def _builtin_relations() -> list[Relation]:
    relations = []
    for name, values, phrasings in _RELATIONS:
        roles = [role for _, role in phrasings]
        assert roles.count("anchor") == 1 and roles.count("unseen") == 1, name
        relations.append(Relation(name, tuple(values), tuple(Phrasing(t, r) for t, r in phrasings)))
    return relations


def _reserved_words(relations: Iterable[Relation]) -> set[str]:
    """Lower-cased words of every value and phrasing: a product stem must not be one of them."""
    words: set[str] = set()
    for rel in relations:
        for text in list(rel.values) + rel.templates():
            for word in text.replace("?", " ").replace(",", " ").replace(":", " ").split():
                words.add(word.lower())
    return words


def _product_names(rng: random.Random, n: int, reserved: set[str]) -> list[str]:
    stems: set[str] = set()
    names: list[str] = []
    attempts = 0
    while len(names) < n:
        attempts += 1
        if attempts > 1000 * max(n, 1):
            raise ValueError(f"cannot generate {n} unique product names")
        stem = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_MIDDLES) + rng.choice(_ONSETS)
                + rng.choice(_VOWELS) + rng.choice(_CODAS))
        if stem in stems or stem in reserved or len(stem) > 9:
            continue
        # No stem may be a prefix of another: "Zorvex" and "Zorvexa" would share a first token.
        if any(stem.startswith(s) or s.startswith(stem) for s in stems):
            continue
        stems.add(stem)
        names.append(f"{stem.capitalize()} {rng.choice(_SUFFIXES)}")
    return names


# ---------------------------------------------------------------------------------------------


class World:
    """The generated catalogue: entities, their facts, relation phrasings and entity splits.

    Build one with :func:`generate_world` or :meth:`World.from_json`; treat it as read-only.
    """

    def __init__(
        self,
        seed: int,
        relations: list[Relation],
        entities: list[str],
        facts: dict[str, dict[str, str]],
        splits: dict[str, list[str]],
        anchor_entities: list[str],
        params: dict | None = None,
    ) -> None:
        self.seed = seed
        self.relations: dict[str, Relation] = {r.name: r for r in relations}
        self.entities = list(entities)
        self._facts = {e: dict(facts[e]) for e in self.entities}
        self.splits = {name: list(splits[name]) for name in SPLITS}
        self.anchor_entities = list(anchor_entities)
        self._anchor_set = set(anchor_entities)
        self.params = dict(params or {})
        self._split_of = {e: name for name, members in self.splits.items() for e in members}
        self._validate()

    def _validate(self) -> None:
        if len(set(self.entities)) != len(self.entities):
            raise ValueError("duplicate entity names")
        if sorted(self._split_of) != sorted(self.entities) or sum(map(len, self.splits.values())) != len(self.entities):
            raise ValueError("splits must partition the entities")
        if not self._anchor_set <= set(self.entities):
            raise ValueError("anchor entities must be entities")
        for e in self.entities:
            if set(self._facts[e]) != set(self.relations):
                raise ValueError(f"entity {e!r} must have exactly one value per relation")
            for rel, value in self._facts[e].items():
                if value not in self.relations[rel].values:
                    raise ValueError(f"{e!r}.{rel} = {value!r} is not in the relation's vocabulary")

    # --- accessors --------------------------------------------------------------------------

    @property
    def facts(self) -> dict[str, dict[str, str]]:
        """``{entity: {relation: value}}`` (a copy)."""
        return {e: dict(rels) for e, rels in self._facts.items()}

    @property
    def relation_names(self) -> list[str]:
        return list(self.relations)

    def fact(self, entity: str, relation: str) -> str:
        return self._facts[entity][relation]

    def split_of(self, entity: str) -> str:
        return self._split_of[entity]

    def is_anchor(self, entity: str) -> bool:
        return entity in self._anchor_set

    def phrasings(self, relation: str, role: str | None = None) -> list[str]:
        """Templates of ``relation`` (``{e}`` marks the entity), optionally only one role."""
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        return self.relations[relation].templates(role)

    @staticmethod
    def render(template: str, entity: str) -> str:
        return template.replace(ENTITY_SLOT, entity)

    def qa_pairs(
        self,
        role: str = "seen",
        entities: Iterable[str] | None = None,
        relations: Iterable[str] | None = None,
    ) -> list[tuple[str, str]]:
        """``(prompt, true answer)`` for every entity × relation × phrasing of ``role``.

        E.g. ``qa_pairs("anchor", [e for e in w.entities if not w.is_anchor(e)])`` measures how
        well the anchor phrasing generalises to entities that never saw it.
        """
        ents = self.entities if entities is None else list(entities)
        rels = self.relation_names if relations is None else list(relations)
        return [
            (self.render(t, e), self._facts[e][r])
            for e in ents
            for r in rels
            for t in self.phrasings(r, role)
        ]

    def pretraining_pairs(self) -> list[tuple[str, str]]:
        """The corpus as ``(prompt, answer)``: seen phrasings for all, anchor for anchor entities."""
        pairs: list[tuple[str, str]] = []
        for e in self.entities:
            for r, rel in self.relations.items():
                for p in rel.phrasings:
                    if p.role == "seen" or (p.role == "anchor" and e in self._anchor_set):
                        pairs.append((p.render(e), self._facts[e][r]))
        return pairs

    def pretraining_texts(self) -> list[str]:
        """The full training corpus, ``prompt + " " + answer`` (the trainer appends EOS)."""
        return [f"{p} {a}" for p, a in self.pretraining_pairs()]

    # --- edits and probes -------------------------------------------------------------------

    def edit_requests(self, split: str, n: int | None = None, seed: int = 0) -> list[EditRequest]:
        """Counterfactual edits of entities in ``split`` (deterministic in world seed, split, seed).

        Each request: ``prompt`` is a seen phrasing, ``target`` another value of the relation,
        ``ground_truth`` the true value, ``paraphrases`` = the other seen phrasings + the anchor
        phrasing, ``locality`` = 2 probes of other entities (from the ``locality`` split; the
        first asks the same relation, the second another one) followed by 2 probes of the same
        entity's other relations; every probe carries its true answer.

        Within one call no (entity, relation) is edited twice, no probe asks a fact edited in
        this call (so a whole call can be applied as one batch), at most ``n_relations - 2``
        relations of one entity are edited, and edits are spread over entities first (a small
        ``n`` touches distinct entities). ``n=None`` returns every edit possible.

        ``meta`` (JSON-serialisable) has ``entity``, ``relation``, ``split``, ``anchor_entity``,
        ``seen_paraphrases``, ``anchor_paraphrases``, ``unseen_paraphrases`` (not in
        ``paraphrases``: never pretrained), ``locality_other`` and ``locality_same`` (indices
        into ``locality``) and ``locality_relations`` / ``locality_entities`` per probe.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        rng = random.Random(f"edits/{self.seed}/{split}/{seed}")
        rel_names = self.relation_names
        per_entity = len(rel_names) - 2
        members = list(self.splits[split])
        rng.shuffle(members)
        orders = {e: rng.sample(rel_names, len(rel_names)) for e in members}
        chosen = [(e, orders[e][layer]) for layer in range(per_entity) for e in members]
        if n is not None:
            if n < 0:
                raise ValueError("n must be >= 0")
            if n > len(chosen):
                raise ValueError(
                    f"split {split!r} allows at most {len(chosen)} edits per call "
                    f"({len(members)} entities x {per_entity} relations); asked for {n}"
                )
            chosen = chosen[:n]

        edited = set(chosen)
        edited_entities = {e for e, _ in chosen}
        pool = [e for e in self.splits["locality"] if e not in edited_entities]
        if len(pool) < 2:  # e.g. editing the locality split itself in a tiny world
            pool = [e for e in self.entities if e not in edited_entities]
        if chosen and len(pool) < 2:
            raise ValueError("not enough unedited entities left for locality probes")

        requests = []
        for entity, relation in chosen:
            seen = self.phrasings(relation, "seen")
            prompt_t = rng.choice(seen)
            other_seen = [self.render(t, entity) for t in seen if t != prompt_t]
            anchor = [self.render(t, entity) for t in self.phrasings(relation, "anchor")]
            unseen = [self.render(t, entity) for t in self.phrasings(relation, "unseen")]
            truth = self._facts[entity][relation]
            target = rng.choice([v for v in self.relations[relation].values if v != truth])

            others = rng.sample(pool, 2)
            other_rels = [relation, rng.choice([r for r in rel_names if r != relation])]
            free = [r for r in rel_names if r != relation and (entity, r) not in edited]
            same_rels = rng.sample(free, 2)
            probe_facts = list(zip(others, other_rels)) + [(entity, r) for r in same_rels]
            probes = [
                LocalityProbe(self.render(rng.choice(self.phrasings(r, "seen")), e), self._facts[e][r])
                for e, r in probe_facts
            ]
            requests.append(
                EditRequest(
                    prompt=self.render(prompt_t, entity),
                    target=target,
                    paraphrases=tuple(other_seen + anchor),
                    locality=tuple(probes),
                    subject=entity,
                    ground_truth=truth,
                    meta={
                        "entity": entity,
                        "relation": relation,
                        "split": split,
                        "anchor_entity": entity in self._anchor_set,
                        "prompt_role": "seen",
                        "seen_paraphrases": other_seen,
                        "anchor_paraphrases": anchor,
                        "unseen_paraphrases": unseen,
                        "locality_other": [0, 1],
                        "locality_same": [2, 3],
                        "locality_entities": [e for e, _ in probe_facts],
                        "locality_relations": [r for _, r in probe_facts],
                    },
                )
            )
        return requests

    def canary_prompts(self, n: int = 16, seed: int = 0) -> list[LocalityProbe]:
        """``n`` distinct facts of ``locality`` entities (seen phrasing, true answer)."""
        pairs = [(e, r) for e in self.splits["locality"] for r in self.relation_names]
        if n > len(pairs):
            raise ValueError(f"only {len(pairs)} canary facts available; asked for {n}")
        rng = random.Random(f"canary/{self.seed}/{seed}")
        picked = rng.sample(pairs, n)
        return [
            LocalityProbe(self.render(rng.choice(self.phrasings(r, "seen")), e), self._facts[e][r])
            for e, r in picked
        ]

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": WORLD_FORMAT_VERSION,
            "seed": self.seed,
            "params": self.params,
            "relations": [
                {
                    "name": r.name,
                    "values": list(r.values),
                    "phrasings": [{"template": p.template, "role": p.role} for p in r.phrasings],
                }
                for r in self.relations.values()
            ],
            "entities": self.entities,
            "facts": self._facts,
            "splits": self.splits,
            "anchor_entities": self.anchor_entities,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "World":
        version = data.get("format_version")
        if version != WORLD_FORMAT_VERSION:
            raise ValueError(f"world format version {version!r} is not {WORLD_FORMAT_VERSION}")
        relations = [
            Relation(
                r["name"],
                tuple(r["values"]),
                tuple(Phrasing(p["template"], p["role"]) for p in r["phrasings"]),
            )
            for r in data["relations"]
        ]
        return cls(
            seed=data["seed"],
            relations=relations,
            entities=data["entities"],
            facts=data["facts"],
            splits=data["splits"],
            anchor_entities=data["anchor_entities"],
            params=data.get("params"),
        )

    @classmethod
    def from_json(cls, text: str) -> "World":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "World":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "entities": len(self.entities),
            "relations": len(self.relations),
            "facts": len(self.entities) * len(self.relations),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "anchor_entities": len(self.anchor_entities),
            "pretraining_texts": len(self.pretraining_pairs()),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return f"World(seed={s['seed']}, entities={s['entities']}, splits={s['splits']}, anchors={s['anchor_entities']})"


def generate_world(
    seed: int = 0,
    n_products: int = 300,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    anchor_fraction: float = 0.25,
) -> World:
    """Generate the catalogue deterministically from ``seed``.

    ``split_fractions`` are the train/eval/locality shares of the products; ``anchor_fraction``
    is the share of *all* products that are anchor entities, drawn from train + locality only.
    """
    if n_products < 10:
        raise ValueError("n_products must be at least 10")
    if len(split_fractions) != 3 or any(f <= 0 for f in split_fractions):
        raise ValueError("split_fractions needs three positive shares (train, eval, locality)")
    rng = random.Random(f"world/{seed}")
    relations = _builtin_relations()
    entities = _product_names(rng, n_products, _reserved_words(relations))
    facts = {e: {r.name: rng.choice(r.values) for r in relations} for e in entities}

    order = list(entities)
    rng.shuffle(order)
    total = sum(split_fractions)
    n_eval = max(2, round(n_products * split_fractions[1] / total))
    n_loc = max(2, round(n_products * split_fractions[2] / total))
    n_train = n_products - n_eval - n_loc
    splits = {
        "train": order[:n_train],
        "eval": order[n_train : n_train + n_eval],
        "locality": order[n_train + n_eval :],
    }
    candidates = splits["train"] + splits["locality"]
    n_anchor = min(len(candidates), round(anchor_fraction * n_products))
    anchors = set(rng.sample(candidates, n_anchor))
    anchor_entities = [e for e in entities if e in anchors]  # catalogue order
    params = {
        "n_products": n_products,
        "split_fractions": list(split_fractions),
        "anchor_fraction": anchor_fraction,
    }
    return World(seed, relations, entities, facts, splits, anchor_entities, params)
