"""The composition root: settings, the FastAPI app and the ``stockledger`` command."""
