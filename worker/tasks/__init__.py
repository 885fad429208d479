"""Celery tasks, one module per concern: edit (GPU queues), maintenance (beat), webhooks."""
