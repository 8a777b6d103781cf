"""The data layer: the NIH ChestX-ray14 files on disk -> a prepared run's cohort and cache.

Callers import from the modules, so that reading metadata never loads torch:

- `metadata`: the official CSV and list files; `discovery`: the image files on disk
- `imaging`: one image file as a grey array; `cache`: every image decoded once
- `cohort`, `split`: which images, and which split each patient goes to
- `prepare`: the prepare stage end to end; `rundata`: what later stages read back

The synthetic demo data set is drawn by `cxrlab.synth`, which this layer never imports.
"""

__all__: list[str] = []  # nothing is exported at package level; see the modules above
