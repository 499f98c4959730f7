import json

import pytest

from editor_core.types import EditRequest, LocalityProbe
from demo_world.world import ROLES, SPLITS, World, generate_world


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(seed=0, n_products=60)


def test_same_seed_same_world_other_seed_other_world():
    a = generate_world(seed=3, n_products=50).to_json()
    assert a == generate_world(seed=3, n_products=50).to_json()
    assert a != generate_world(seed=4, n_products=50).to_json()


def test_default_world_shape():
    w = generate_world()
    assert len(w.entities) == 300
    assert len(w.relations) == 8
    for rel in w.relations.values():
        assert 10 <= len(rel.values) <= 40
        assert len(set(rel.values)) == len(rel.values)
        roles = [p.role for p in rel.phrasings]
        assert 3 <= roles.count("seen") <= 4
        assert roles.count("anchor") == 1 and roles.count("unseen") == 1
        assert all(p.template.count("{e}") == 1 for p in rel.phrasings)
    assert len(set(w.entities)) == 300
    assert 0.2 <= len(w.anchor_entities) / 300 <= 0.3


def test_entity_names_unique_and_distinct_from_vocabulary(world):
    stems = [e.split()[0].lower() for e in world.entities]
    assert len(set(stems)) == len(stems)
    vocab = " ".join(v for r in world.relations.values() for v in r.values).lower().split()
    assert not set(stems) & set(vocab)


def test_facts_accessor(world):
    facts = world.facts
    assert set(facts) == set(world.entities)
    for e, rels in facts.items():
        assert set(rels) == set(world.relation_names)
        for r, v in rels.items():
            assert v in world.relations[r].values
            assert world.fact(e, r) == v
    facts[world.entities[0]]["price"] = "changed"  # a copy: the world is unaffected
    assert world.fact(world.entities[0], "price") != "changed"


def test_splits_partition_entities_and_anchors_avoid_eval(world):
    sets = [set(world.splits[s]) for s in SPLITS]
    assert all(sets)
    assert sum(map(len, sets)) == len(world.entities)
    assert set().union(*sets) == set(world.entities)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert world.anchor_entities
    assert not set(world.anchor_entities) & set(world.splits["eval"])
    for e in world.entities:
        assert world.split_of(e) in SPLITS


def test_pretraining_texts_follow_roles(world):
    texts = set(world.pretraining_texts())
    assert len(texts) == len(world.pretraining_texts())  # no duplicates
    for e in world.entities:
        for r in world.relation_names:
            answer = world.fact(e, r)
            for t in world.phrasings(r, "seen"):
                assert f"{world.render(t, e)} {answer}" in texts
            for t in world.phrasings(r, "anchor"):
                assert (f"{world.render(t, e)} {answer}" in texts) == world.is_anchor(e)
    # the unseen phrasing never appears, for any entity, with any answer
    for r in world.relation_names:
        for t in world.phrasings(r, "unseen"):
            head, tail = t.split("{e}")
            assert not any(text.startswith(head) and tail in text for text in texts)
    n_seen = sum(len(world.phrasings(r, "seen")) for r in world.relation_names)
    assert len(texts) == len(world.entities) * n_seen + len(world.anchor_entities) * len(world.relation_names)


def test_qa_pairs_roles(world):
    for role in ROLES:
        pairs = world.qa_pairs(role, world.entities[:2])
        assert len(pairs) == 2 * sum(len(world.phrasings(r, role)) for r in world.relation_names)
    with pytest.raises(ValueError):
        world.phrasings("price", "sometimes")


def test_edit_requests_content(world):
    reqs = world.edit_requests("eval")
    assert reqs and all(isinstance(r, EditRequest) for r in reqs)
    eval_entities = set(world.splits["eval"])
    for r in reqs:
        m = r.meta
        e, rel = m["entity"], m["relation"]
        assert e in eval_entities and r.subject == e and m["split"] == "eval"
        assert not m["anchor_entity"]
        assert r.ground_truth == world.fact(e, rel)
        assert r.target != r.ground_truth and r.target in world.relations[rel].values
        seen = [world.render(t, e) for t in world.phrasings(rel, "seen")]
        assert r.prompt in seen
        assert sorted(m["seen_paraphrases"] + [r.prompt]) == sorted(seen)
        assert m["anchor_paraphrases"] == [world.render(t, e) for t in world.phrasings(rel, "anchor")]
        assert m["unseen_paraphrases"] == [world.render(t, e) for t in world.phrasings(rel, "unseen")]
        assert list(r.paraphrases) == m["seen_paraphrases"] + m["anchor_paraphrases"]
        assert not set(m["unseen_paraphrases"]) & set(r.paraphrases)
        json.dumps(m)  # serialisable


def test_edit_requests_locality_labels(world):
    reqs = world.edit_requests("train", n=40, seed=1)
    for r in reqs:
        m = r.meta
        assert len(r.locality) == 4 and all(isinstance(p, LocalityProbe) for p in r.locality)
        assert sorted(m["locality_other"] + m["locality_same"]) == [0, 1, 2, 3]
        for i, probe in enumerate(r.locality):
            e, rel = m["locality_entities"][i], m["locality_relations"][i]
            assert probe.answer == world.fact(e, rel)
            assert probe.prompt in [world.render(t, e) for t in world.phrasings(rel, "seen")]
        for i in m["locality_other"]:
            e = m["locality_entities"][i]
            assert e != m["entity"]
            assert world.split_of(e) == "locality"
            assert m["entity"] not in r.locality[i].prompt
        for i in m["locality_same"]:
            assert m["locality_entities"][i] == m["entity"]
            assert m["locality_relations"][i] != m["relation"]
            assert m["entity"] in r.locality[i].prompt


def test_edit_requests_batch_consistency(world):
    reqs = world.edit_requests("train")
    keys = [(r.meta["entity"], r.meta["relation"]) for r in reqs]
    assert len(keys) == len(set(keys))
    edited = set(keys)
    for r in reqs:  # no probe asks a fact that another request of this call changes
        for e, rel in zip(r.meta["locality_entities"], r.meta["locality_relations"]):
            assert (e, rel) not in edited
    # a small n touches distinct entities
    few = world.edit_requests("train", n=10)
    assert len({r.meta["entity"] for r in few}) == 10
    with pytest.raises(ValueError):
        world.edit_requests("train", n=len(reqs) + 1)
    with pytest.raises(ValueError):
        world.edit_requests("nope")


def test_edit_requests_deterministic(world):
    a = world.edit_requests("eval", n=20, seed=5)
    b = world.edit_requests("eval", n=20, seed=5)
    c = world.edit_requests("eval", n=20, seed=6)
    assert [(r.prompt, r.target, r.locality, r.meta) for r in a] == [(r.prompt, r.target, r.locality, r.meta) for r in b]
    assert [(r.prompt, r.target) for r in a] != [(r.prompt, r.target) for r in c]


def test_canary_prompts(world):
    canaries = world.canary_prompts(12, seed=2)
    assert len(canaries) == 12 and len(set(canaries)) == 12
    loc = set(world.splits["locality"])
    for c in canaries:
        entity = next(e for e in loc if e in c.prompt)
        assert any(c.answer == world.fact(entity, r) for r in world.relation_names)
    assert canaries == world.canary_prompts(12, seed=2)


def test_json_round_trip(world, tmp_path):
    text = world.to_json()
    back = World.from_json(text)
    assert back.to_json() == text
    assert back.facts == world.facts and back.splits == world.splits
    assert back.anchor_entities == world.anchor_entities
    assert back.pretraining_texts() == world.pretraining_texts()
    assert [r.meta for r in back.edit_requests("eval", n=5)] == [r.meta for r in world.edit_requests("eval", n=5)]
    path = tmp_path / "world.json"
    world.save(path)
    assert World.load(path).to_json() == text
    data = json.loads(text)
    data["format_version"] = 999
    with pytest.raises(ValueError):
        World.from_dict(data)
