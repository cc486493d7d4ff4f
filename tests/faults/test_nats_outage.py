"""NATS stopped for 30 seconds under load, then restarted, with stockledger left running.

Writes touch only PostgreSQL, so they go on being answered 2xx, as quickly as before; postings
and events wait in the log (the outbox), /ready says NATS is unreachable and how many events
wait; when NATS is back the relays publish the backlog by themselves, each posting and each event
exactly once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from adapters.embedded import EmbeddedNats

OUTAGE_SECONDS = 30.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_nats_outage_delays_postings_but_loses_none_and_writes_go_on(
    kit: Any, private_nats: EmbeddedNats, fresh_database_url: Any, figures: Any
) -> None:
    database_url = fresh_database_url()
    served = kit.serve.start(database_url, private_nats.url, kit.admin_key)
    skus = [f"NATS-{n}" for n in range(8)]
    with served.client() as client:
        kit.setup_stock(client, skus, 2000)

    readiness: list[tuple[float, float, int, Any]] = []
    stop_polling = threading.Event()

    def poll_ready() -> None:
        with httpx.Client(base_url=served.base_url, timeout=10) as client:
            while not stop_polling.is_set():
                started = time.monotonic()
                response = client.get("/ready")
                readiness.append(
                    (started, time.monotonic() - started, response.status_code, response.json())
                )
                time.sleep(0.5)

    poller = threading.Thread(target=poll_ready, daemon=True)
    poller.start()
    load = kit.load([served.base_url], skus, threads=6, pause=0.02).start()
    time.sleep(3)
    before = load.since(0)

    private_nats.stop()
    down = time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    back = time.monotonic()
    backlog_at_restart = kit.head_position(database_url) - kit.positions(database_url).get(
        "relay:erp-postings", 0
    )
    private_nats.start()  # same port, same store
    restarted = time.monotonic()
    time.sleep(2)
    answers = load.stop()
    kit.wait_until(lambda: kit.caught_up(database_url), "the relays to drain the backlog", 90)
    drained = time.monotonic()
    stop_polling.set()
    poller.join(15)

    during = [a for a in answers if down <= a.started < back]
    assert len(during) > 100, "writes went on during the outage"
    assert all(a.ok or a.status == 409 for a in during), kit.summary(during)
    assert sum(1 for a in during if a.ok) >= len(during) * 0.9, kit.summary(during)
    assert max(a.seconds for a in during) < 2.0, kit.summary(during)

    polled = [r for r in readiness if down + 2 <= r[0] < back]
    assert polled, "/ready was asked during the outage"
    for _, seconds, status, body in polled:
        assert seconds < 2.0
        # NATS down does not stop writes, so the process stays ready; the check says why.
        assert status == 200, body
        assert str(body["checks"]["nats"]).startswith("unreachable"), body
    assert any("events wait to be published" in str(r[3]["checks"]["nats"]) for r in polled)
    after = [r for r in readiness if r[0] >= drained - 1]
    assert not after or after[-1][3]["checks"]["nats"] == "ok"

    recorded = kit.assert_answers_recorded(database_url, answers)
    served.terminate()
    views = kit.assert_views_match_a_rebuild(database_url)
    streams = kit.assert_streams_exactly_once(database_url, private_nats.url)
    figures(
        "nats outage",
        {
            "outage_seconds": round(back - down, 1),
            "writes_before": kit.summary(before),
            "writes_during_outage": kit.summary(during),
            "events_waiting_at_restart": backlog_at_restart,
            "drained_after_restart_s": round(drained - restarted, 2),
            "ready_during_outage_max_s": round(max(r[1] for r in polled), 3),
            **recorded,
            "views_rows": views,
            "stream_messages": streams,
        },
    )
