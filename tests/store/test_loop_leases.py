"""The loop's lock lives in the store: one pass per NAME across machines, refused with who holds it,
renewed while the pass runs, and taken over once a dead holder's lease has run out (both backends)."""

import threading

import pytest

from tunery.errors import ConfigError
from tunery.platform.loop_lock import loop_lock
from tunery.store.loop_leases import lease_of, take_lease


def test_a_second_loop_on_the_same_name_is_refused_with_its_holder(store):
    with loop_lock(store, "helpdesk") as lease:
        with pytest.raises(ConfigError) as refused:
            with loop_lock(store, "helpdesk"):
                pass
        assert refused.value.code == "loop_running"
        assert lease.holder in refused.value.message and "pid" in refused.value.message
        with loop_lock(store, "other"):  # another name is its own lock
            assert lease_of(store, "other") is not None
        assert lease_of(store, "helpdesk")["holder"] == lease.holder
    assert lease_of(store, "helpdesk") is None  # released at the end of the pass
    with loop_lock(store, "helpdesk"):
        pass


def test_a_dead_holders_lease_runs_out_and_is_taken_over(store):
    # A holder on another machine that died: its lease was never renewed and has run out.
    dead = take_lease(store, "helpdesk", "far-host-99-abc", host="far-host", pid=99, lease_s=-1)
    assert dead["holder"] == "far-host-99-abc"
    with loop_lock(store, "helpdesk") as lease:
        assert lease_of(store, "helpdesk")["holder"] == lease.holder
    # A live one on another machine is not taken over.
    take_lease(store, "helpdesk", "far-host-98-abc", host="far-host", pid=98, lease_s=3600)
    with pytest.raises(ConfigError, match="far-host-98-abc"):
        with loop_lock(store, "helpdesk"):
            pass


def test_a_running_pass_renews_its_lease(store):
    with loop_lock(store, "helpdesk", lease_s=0.3) as lease:
        first = lease_of(store, "helpdesk")["expires_at"]
        renewed = threading.Event()
        for _ in range(200):
            if lease_of(store, "helpdesk")["expires_at"] > first:
                renewed.set()
                break
            renewed.wait(0.05)
        assert renewed.is_set() and not lease.lost.is_set()
        lease.check()


def test_two_loops_racing_for_one_name_one_wins(store):
    outcomes, start, lock = [], threading.Barrier(4), threading.Lock()
    all_tried = threading.Event()

    def record(outcome):
        with lock:
            outcomes.append(outcome)
            if len(outcomes) == 4:
                all_tried.set()

    def attempt():
        start.wait()
        try:
            with loop_lock(store, "helpdesk"):
                record("held")
                all_tried.wait(60)  # held until every other attempt has been answered
        except ConfigError:
            record("refused")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["held", "refused", "refused", "refused"]
