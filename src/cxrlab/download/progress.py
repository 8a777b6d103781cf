"""Progress bars of a download: one per file and one overall (bytes, rate, ETA), on tqdm."""

from __future__ import annotations

from tqdm.auto import tqdm

from cxrlab.download.transfer import Progress

_BYTES = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}


class TqdmProgress(Progress):
    """The transfer callbacks drawn as tqdm bars; `enabled=False` draws nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.overall: tqdm | None = None
        self.file: tqdm | None = None
        self._counted = 0  # bytes of the current file included in the overall bar

    def set_total(self, total: int) -> None:
        """Bytes of the archives still to fetch (known once their sizes are)."""
        self._overall().total = total
        self._overall().refresh()

    def start(self, name: str, total: int | None, have: int) -> None:
        if self.file is not None:
            self.file.close()
        self.file = tqdm(
            total=total,
            initial=have,
            desc=name,
            leave=False,
            disable=not self.enabled,
            **_BYTES,
        )
        self._overall().update(have - self._counted)  # a resumed file counts what it has
        self._counted = have

    def advance(self, n: int) -> None:
        self._counted += n
        if self.file is not None:
            self.file.update(n)
        self._overall().update(n)

    def finish(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self._counted = 0

    def close(self) -> None:
        self.finish()
        if self.overall is not None:
            self.overall.close()

    def _overall(self) -> tqdm:
        if self.overall is None:
            self.overall = tqdm(desc="download", disable=not self.enabled, **_BYTES)
        return self.overall
