"""Registry rows on both backends: numbering, aliases that move only from where they were, the audit trail."""

from __future__ import annotations

import threading

import pytest

from tunery.errors import NotFoundError
from tunery.store import registry as reg


def add(store, name="helpdesk", run="/runs/a"):
    return reg.insert_version(store, name, run_dir=run, base_model="base", lineage={"seed": 1})


def test_versions_number_per_name(store):
    assert [add(store).ref, add(store).ref, add(store, "other").ref] == ["helpdesk@1", "helpdesk@2", "other@1"]
    assert [v.ref for v in reg.list_versions(store, "helpdesk")] == ["helpdesk@1", "helpdesk@2"]
    assert reg.get_version(store, "helpdesk", 2).lineage == {"seed": 1}
    with pytest.raises(NotFoundError):
        reg.get_version(store, "helpdesk", 3)
    reg.attach_report(store, "helpdesk", 1, {"kind": "eval", "path": "r.html"})
    assert reg.get_version(store, "helpdesk", 1).reports == [{"kind": "eval", "path": "r.html"}]


def test_an_alias_moves_only_from_where_it_was(store):
    for _ in range(3):
        add(store)
    assert reg.move_alias(store, "helpdesk", "production", 1, expected=None, actor="a", action="promote")
    assert not reg.move_alias(store, "helpdesk", "production", 2, expected=None, actor="b", action="promote")
    assert reg.move_alias(store, "helpdesk", "production", 2, expected=1, actor="a", action="promote", reason="better")
    assert not reg.move_alias(store, "helpdesk", "production", 3, expected=1, actor="b", action="promote")
    assert reg.alias_version(store, "helpdesk", "production") == 2
    history = reg.alias_history(store, "helpdesk", "production")
    assert [(m["from_version"], m["to_version"], m["outcome"], m["actor"]) for m in history] == [
        (None, 1, "moved", "a"), (None, 2, "conflict", "b"), (1, 2, "moved", "a"), (1, 3, "conflict", "b")]
    assert history[2]["reason"] == "better"


def test_two_promotions_at_once_one_wins_both_audited(store):
    for _ in range(3):
        add(store)
    reg.move_alias(store, "helpdesk", "production", 1, expected=None, actor="setup", action="promote")
    results = {}
    barrier = threading.Barrier(2)

    def promote(version):
        barrier.wait()
        results[version] = reg.move_alias(store, "helpdesk", "production", version, expected=1, actor=f"k{version}",
                                          action="promote")

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(v for v, ok in results.items() if ok)
    assert reg.alias_version(store, "helpdesk", "production") == winner
    attempts = [m for m in reg.alias_history(store, "helpdesk") if m["actor"] in ("k2", "k3")]
    assert sorted(m["outcome"] for m in attempts) == ["conflict", "moved"]


def test_a_job_registers_one_version_even_when_its_insert_is_retried(store):
    # A retried insert whose first commit landed (acknowledgement lost with the connection) must not
    # add a second version for the same job.
    first = reg.insert_version(store, "helpdesk", run_dir="/runs/a", base_model="base", lineage={}, job_id="ftjob-1")
    again = reg.insert_version(store, "helpdesk", run_dir="/runs/a", base_model="base", lineage={}, job_id="ftjob-1")
    other = reg.insert_version(store, "helpdesk", run_dir="/runs/b", base_model="base", lineage={}, job_id="ftjob-2")
    assert (first.ref, again.ref, other.ref) == ("helpdesk@1", "helpdesk@1", "helpdesk@2")
    assert [v.ref for v in reg.list_versions(store, "helpdesk")] == ["helpdesk@1", "helpdesk@2"]
