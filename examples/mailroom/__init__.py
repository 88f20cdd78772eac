"""Mailroom: a small FastAPI service that signs users up and imports contact lists."""
