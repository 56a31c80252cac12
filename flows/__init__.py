"""Prefect flows of Fedship: training, promotion and rollback."""

import tasks  # noqa: F401  (sets Fedship's Prefect defaults before Prefect is imported)
