"""ERP postings without a database: their ids and the exact bytes of their bodies.

The bodies are pinned byte for byte: a posting published again (after an upgrade, say) must be
the very message it was the first time.
"""

from __future__ import annotations

from uuid import UUID, uuid4, uuid5

from adapters.erp import Amount, Posting, PostingLine, PostingReference, posting_id_for
from domain.keys import NAMESPACE

SOURCE = "7db8d02e-7699-5373-aba4-f92b05482303"


def test_a_posting_id_is_the_uuid5_of_its_source_event_id_whether_given_as_uuid_or_text() -> None:
    for source in [UUID(SOURCE), *(uuid4() for _ in range(1000))]:
        expected = str(uuid5(NAMESPACE, f"erp-posting:{source}"))
        assert posting_id_for(source) == expected
        assert posting_id_for(str(source)) == expected


def test_a_body_keeps_the_members_that_apply_in_schema_order() -> None:
    receipt = Posting(
        posting_id=posting_id_for(SOURCE),
        kind="GOODS_RECEIPT",
        posting_date="2026-11-27",
        occurred_at="2026-11-27T09:03:54.088881+00:00",
        location="WH-1",
        lines=[PostingLine("SKU-1", 40)],
        reference=PostingReference(document="PO-1001"),
        source_event_ids=[SOURCE],
    )
    assert receipt.subject == "stockledger.erp.postings.goods_receipt"
    assert receipt.to_json() == (
        b'{"schema":"stockledger.erp.posting.v1",'
        b'"posting_id":"de76ec40-f9fb-52d4-ba47-eba4a30bdd18","kind":"GOODS_RECEIPT",'
        b'"posting_date":"2026-11-27","occurred_at":"2026-11-27T09:03:54.088881+00:00",'
        b'"location":"WH-1","lines":[{"sku":"SKU-1","quantity":40}],'
        b'"reference":{"document":"PO-1001"},'
        b'"source_event_ids":["7db8d02e-7699-5373-aba4-f92b05482303"]}'
    )


def test_a_refund_without_a_location_sends_it_null_and_last_and_non_ascii_escaped() -> None:
    refund = Posting(
        posting_id=posting_id_for(SOURCE),
        kind="REFUND",
        posting_date="2026-11-27",
        occurred_at="2026-11-27T10:00:00+00:00",
        location=None,
        lines=[],
        reference=PostingReference(
            channel="shopify", order_id="o-1", external_order_id="1001", refund_id="Rü-1"
        ),
        amount=Amount("9.00"),
        source_event_ids=[SOURCE],
    )
    assert refund.to_json() == (
        b'{"schema":"stockledger.erp.posting.v1",'
        b'"posting_id":"de76ec40-f9fb-52d4-ba47-eba4a30bdd18","kind":"REFUND",'
        b'"posting_date":"2026-11-27","occurred_at":"2026-11-27T10:00:00+00:00","lines":[],'
        b'"reference":{"channel":"shopify","order_id":"o-1","external_order_id":"1001",'
        b'"refund_id":"R\\u00fc-1"},"amount":{"value":"9.00"},'
        b'"source_event_ids":["7db8d02e-7699-5373-aba4-f92b05482303"],"location":null}'
    )
