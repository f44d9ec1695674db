"""``[core] hostname_callable`` for the distributed e2e test: each component is a "machine" named by its environment.

Every component of ``CeleryDeployment`` runs on this one host; the task instance's ``hostname`` must still
say which Celery worker ran a try, as it would across machines.
"""

from __future__ import annotations

import os
import socket


def name() -> str:
    return os.environ.get("FLUX_REDUX_E2E_NODE") or socket.getfqdn()
