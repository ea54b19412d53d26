"""Cohorts: many registrations from one manifest, on Dask (a local cluster, any Dask scheduler or
SLURM), resumable, with QC figures and a report."""
