"""The backup benchmark behind `nox -s bench` (see bench/README.md).

Modules: `data` generates and loads tracker databases, `measure` runs one
command and records its wall time and memory, `scenarios` runs our backup,
the naive baseline and the `cp` floor, `report` prints and saves the results,
and `cli` ties them together.
"""
