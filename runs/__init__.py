"""The run contract between core and the database / UI.

- :mod:`runs.spec`: the job spec and the ONE builder (New run, Sensitivity, sweeps, CLI).
- :mod:`runs.catalogue`: every metric once (key, label, unit, definition, better, format).
- :mod:`runs.records`: typed results, per-layer rows and the fingerprint, as stored.
- :mod:`runs.pipeline`: one job as named stages with their progress weights.
- :mod:`runs.sweep`, :mod:`runs.sensitivity`: many specs from one, and their points.

Imports core, never streamlit, sqlalchemy or db: a page or a worker hands in what it
needs from the database as plain callables.
"""
