"""The restore job: driver, per-row stages, manifest, config, results, reducer and report."""
