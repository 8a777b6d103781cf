"""Fetch the NIH ChestX-ray14 release into the layout `cxrlab prepare` reads.

- `sources`: the data file (`nih.yaml`) of names, links, sizes, checksums, image counts,
  and the plan of which archives a run fetches (`--parts`, `--images`)
- `transfer`: one file over HTTP, resumable (Range), retried with backoff
- `archive`: one tar.gz unpacked into `images/`, every image decoded
- `manifest`: `cxrlab-download.json`, the record of what is there and checked
- `workflow`: `download_nih`, the whole command

Callers import from the modules (the data layer imports `manifest` without the network
code).
"""

__all__: list[str] = []
