"""Which of the ledger's methods a writer in another process runs (``Ledger.forward_writes``)."""

from __future__ import annotations

import inspect
import typing

from domain.service import FORWARDABLE, Ledger


def test_every_write_of_the_ledger_is_forwarded_to_where_writes_are_recorded() -> None:
    # A write left out would be recorded by the API process's own writer, beside the writer
    # process: two writers of the same aggregates, each with its own cache.
    answers_a_write = {
        name
        for name, method in inspect.getmembers(Ledger, inspect.isfunction)
        if not name.startswith("_")
        and "WriteResult" in str(typing.get_type_hints(method).get("return"))
    }
    # place_order waits for submit_order, which is forwarded; with_position only reads the log.
    assert answers_a_write - {"place_order", "with_position", "outcome"} == FORWARDABLE
