"""Apache Airflow provider for FLUX.1 [schnell] Redux on fal.ai and fal-compatible gateways."""

from __future__ import annotations

__version__ = "0.2.0"
