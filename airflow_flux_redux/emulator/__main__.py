"""``python -m airflow_flux_redux.emulator``: the ``flux-redux-emulator`` command (see ``cli``)."""

from __future__ import annotations

from airflow_flux_redux.emulator.cli import main

if __name__ == "__main__":
    main()
