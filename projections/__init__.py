"""Views of the ledger: each with its read model, its handler and its rebuild."""
