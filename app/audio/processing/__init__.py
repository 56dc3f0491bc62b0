"""Audio processing as plain functions: no Django, no Celery (they call in here)."""
