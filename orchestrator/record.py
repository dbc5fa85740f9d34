"""What a trial hands back for each of its runs: a `TrialRecord` (trial key, MLflow params,
metrics, cache key, and for a final selection the kept feature indices).

Records travel from a Ray worker to the driver inside Tune's result, as plain rows
(`as_row`, JSON-able: Tune's JSON logger writes them too); the driver reads them back with
`from_row` once, where it logs them.
"""
from __future__ import annotations

from dataclasses import dataclass


def kf_suffix(fraction: float) -> str:
    """Metric-name suffix of a keep fraction: `val_accuracy/kf_0.05`."""
    return f"kf_{float(fraction)!r}"


@dataclass
class TrialRecord:
    key: str  # the run's trial key
    params: dict
    metrics: dict[str, float | None]
    cache_key: str = ""
    kept: dict[str, list[int]] | None = None  # final head2toe: kept columns per layer
    widths: dict[str, int] | None = None  # ... and each layer's width

    def as_row(self) -> dict:
        row = {"key": self.key, "params": self.params, "cache_key": self.cache_key, "metrics": self.metrics}
        if self.kept is not None:
            row["kept"], row["widths"] = self.kept, self.widths or {}
        return row

    @classmethod
    def from_row(cls, row: dict) -> "TrialRecord":
        return cls(row["key"], row["params"], row["metrics"], row.get("cache_key", ""), row.get("kept"), row.get("widths"))

    @property
    def accuracy(self) -> float:
        """What Tune shows and sorts by: validation accuracy in CV, test accuracy in the final stage."""
        m = self.metrics
        return m["val_accuracy"] if m.get("val_accuracy") is not None else m["test_accuracy"]
