"""The configuration the test worker and the test's producer share.

Broker and results use a Redis database and a key prefix of their own
(``CELERY_TEST_REDIS_URL``, ``CELERY_TEST_KEY_PREFIX``), so the service's keys
are never touched.
"""

from __future__ import annotations

from typing import Any


def celery_config(redis_url: str, key_prefix: str) -> dict[str, Any]:
    transport_options = {"global_keyprefix": key_prefix}
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": f"{key_prefix}tasks",
        "worker_hijack_root_logger": False,
    }
