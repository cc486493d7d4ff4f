"""Request ids made by the API: 32 hex digits, never repeated, in this process or a forked one."""

from __future__ import annotations

import os
import re

from api.middleware import new_request_id


def test_request_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]

    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_process_makes_ids_of_its_own() -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    childs = os.read(read_end, 64).decode()
    os.close(read_end)

    ours = new_request_id()

    assert childs[:16] != ours[:16]
