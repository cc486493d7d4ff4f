"""``kill -9`` of a serve process in the middle of a load of mixed writes, twice.

Whatever the process was doing (a group commit, a view batch, a relay between publishing and
recording its progress), once a new process has started on the same database and NATS: every
write answered 2xx is in the log at the position it was answered with; a write whose answer was
lost, retried with its key, is recorded once; the views equal a fresh rebuild; and every posting
and every event is in its stream exactly once.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from adapters.embedded import EmbeddedNats

LOAD_SECONDS = 4.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_under_load_loses_no_answered_write_and_duplicates_nothing(
    kit: Any, private_nats: EmbeddedNats, fresh_database_url: Any, figures: Any
) -> None:
    database_url = fresh_database_url()
    skus = [f"KILL-{n}" for n in range(10)]
    served = kit.serve.start(database_url, private_nats.url, kit.admin_key)
    with served.client() as client:
        kit.setup_stock(client, skus, 2000)

    answers: list[Any] = []
    kills = []
    for round_number in range(2):
        load = kit.load([served.base_url], skus, threads=8, seed=round_number + 1).start()
        time.sleep(LOAD_SECONDS)
        head_before = kit.head_position(database_url)
        served.kill()  # in the middle of the load: requests in flight lose their answers
        kills.append(head_before)
        answers.extend(load.stop())
        served = kit.serve.start(database_url, private_nats.url, kit.admin_key)

    # Writes whose answer was lost are retried with their key: recorded once, whatever happened.
    lost = [answer for answer in answers if answer.status is None]
    retried = []
    with served.client() as client:
        for answer in lost:
            again = kit.send(
                client, answer.op, answer.method, answer.path, answer.body, key=answer.key
            )
            assert again.status is not None and again.status < 500, (again.status, again.response)
            retried.append(again)
    # And the survivor takes more writes, so the views and relays work on after the crashes.
    answers.extend(kit.load([served.base_url], skus, threads=4, seed=9).run_for(2.0))
    answers.extend(retried)

    server_errors = [a for a in answers if a.status is not None and a.status >= 500]
    assert not server_errors, kit.summary(server_errors)
    kit.wait_until(lambda: kit.caught_up(database_url), "views and relays to catch up", 90)
    recorded = kit.assert_answers_recorded(database_url, answers)
    served.terminate()
    views = kit.assert_views_match_a_rebuild(database_url)
    streams = kit.assert_streams_exactly_once(database_url, private_nats.url)
    figures(
        "kill -9 under load",
        {
            "kills": len(kills),
            "writes": kit.summary(answers),
            "lost_answers": len(lost),
            "lost_in_flight_at_a_kill": sum(1 for a in lost if "ConnectError" not in str(a.error)),
            "lost_then_retried_replayed": sum(1 for a in retried if a.replayed),
            "lost_then_retried_recorded_now": sum(1 for a in retried if a.ok and not a.replayed),
            **recorded,
            "views_rows": views,
            "stream_messages": streams,
        },
    )
