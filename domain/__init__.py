"""The stockledger domain: aggregates, events, rules and the application service.

Nothing here performs I/O or imports web, database or messaging libraries; infrastructure is
chosen by configuration (eventsourcing's ``PERSISTENCE_MODULE``).
"""
