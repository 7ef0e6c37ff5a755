"""What both backends share: the table placement report."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Placement:
    """Where each array of a loaded table lives (``describe`` prints it)."""

    device: str
    rows: list = field(default_factory=list)  # (name, kind, bytes, where)

    def add(self, name: str, kind: str, nbytes: int, where: str) -> None:
        self.rows.append((name, kind, int(nbytes), where))

    def bytes_in(self, where: str) -> int:
        return sum(r[2] for r in self.rows if r[3] == where)

    def describe(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        lines = [f"placement on {self.device}:", f"  {'column':<{width}}  {'kind':<7} {'MiB':>9}  where"]
        lines += [f"  {n:<{width}}  {k:<7} {b / 2**20:>9.2f}  {w}" for n, k, b, w in self.rows]
        totals = ", ".join(f"{w}: {self.bytes_in(w) / 2**20:,.1f} MiB" for w in dict.fromkeys(r[3] for r in self.rows))
        return "\n".join(lines + [f"  totals: {totals}"])
