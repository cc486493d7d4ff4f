"""The embedded servers are real servers: data survives restarts, JetStream works."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats
import psycopg
import pytest

from adapters.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    free_tcp_port,
    is_reachable,
)


def test_embedded_postgres_accepts_connections_and_keeps_data_across_restart(
    tmp_path: Path,
) -> None:
    pgdata = tmp_path / "data" / "postgres"
    with EmbeddedPostgres(pgdata) as server:
        assert server.owned
        assert server.url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO kept VALUES (1, 'survives restart')")
        port = server.port
    assert not is_reachable("127.0.0.1", port)

    with EmbeddedPostgres(pgdata) as again, psycopg.connect(again.url) as conn:
        row = conn.execute("SELECT note FROM kept WHERE id = 1").fetchone()
    assert row == ("survives restart",)


def test_second_embedded_postgres_on_same_folder_attaches_without_owning(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "postgres") as first:
        second = EmbeddedPostgres(tmp_path / "postgres")
        assert not second.owned
        assert second.url == first.url
        second.stop()  # must not stop the server the first instance started
        with psycopg.connect(first.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_embedded_postgres_url_for_targets_another_database(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "postgres") as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE other")
        with psycopg.connect(server.url_for("other")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("other",)


async def _publish_with_dedup(url: str) -> tuple[int, bool]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EMBEDDED_TEST", subjects=["embedded.test.>"])
        headers = {"Nats-Msg-Id": "msg-1"}
        ack = await js.publish("embedded.test.one", b"hello", headers=headers)
        dup = await js.publish("embedded.test.one", b"hello", headers=headers)
        info = await js.stream_info("EMBEDDED_TEST")
        assert info.state.messages == 1
        return ack.seq, dup.duplicate or False
    finally:
        await nc.close()


def test_embedded_nats_serves_jetstream(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        assert server.url.startswith("nats://127.0.0.1:")
        seq, duplicate = asyncio.run(_publish_with_dedup(server.url))
        port = server.port
    assert seq == 1
    assert duplicate
    assert not is_reachable("127.0.0.1", port)


async def _stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("EMBEDDED_TEST")
        return info.state.messages
    finally:
        await nc.close()


def test_embedded_nats_restarts_on_same_port_with_stored_streams(
    embedded_nats_factory: Callable[..., EmbeddedNats],
) -> None:
    server = embedded_nats_factory()
    asyncio.run(_publish_with_dedup(server.url))
    url = server.url
    server.stop()
    assert not server.running

    server.start()
    assert server.url == url
    assert asyncio.run(_stream_messages(url)) == 1


def test_embedded_nats_on_a_taken_port_fails_with_log_tail(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "a") as server:
        with pytest.raises(EmbeddedServerError) as err:
            EmbeddedNats(tmp_path / "b", port=server.port, start_timeout=5)
        assert server.running, "the server already on the port must be left alone"
    message = str(err.value)
    assert "\n" not in message
    assert "address already in use" in message


def test_free_tcp_port_is_not_reachable() -> None:
    assert not is_reachable("127.0.0.1", free_tcp_port(), timeout=0.2)


def test_fresh_database_is_empty(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert name is not None and name[0].startswith("stockledger_test_")
    assert tables == (0,)


def test_fresh_database_url_factory_gives_isolated_databases(
    fresh_database_url: Callable[[], str],
) -> None:
    first, second = fresh_database_url(), fresh_database_url()
    assert first != second
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_in_first (id int)")
    with psycopg.connect(second) as conn:
        found = conn.execute("SELECT to_regclass('only_in_first')").fetchone()
    assert found == (None,)


def test_nats_url_has_jetstream_without_product_streams(nats_url: str) -> None:
    async def stream_names() -> list[str]:
        nc = await nats.connect(nats_url)
        try:
            return [s.config.name or "" for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    names = asyncio.run(stream_names())
    assert "STOCKLEDGER_ERP" not in names
    assert "STOCKLEDGER_EVENTS" not in names


def test_embedded_postgres_restarts_on_same_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres")
    url = server.url
    server.stop()
    assert not is_reachable("127.0.0.1", server.port)
    with server.start(), psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.stop()
