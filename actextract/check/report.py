"""What :func:`actextract.check.verification.verify` reports: the problems it found by array and row
range, the state they sum up to, and the report as terminal text with what to do about each."""

from __future__ import annotations

from dataclasses import dataclass, field

from actextract.store.integrity import MetaProblem

__all__ = ["DAMAGE", "EVERY_ARRAY", "Problem", "VerifyReport", "format_verify"]

DAMAGE = ("undecodable", "missing")
EVERY_ARRAY = "*"  # the array of a 'not-done' problem: the whole row block is unwritten


@dataclass(frozen=True)
class Problem:
    """Rows ``[start, stop)`` (row blocks ``[first, stop)``) of one array that are ``kind``:
    'missing' (a chunk of a done block is not in the store), 'undecodable' (it does not read
    back: checksum mismatch, truncation) or 'not-done' (not written yet; ``array`` is '*').
    ``array``: a layer name, 'labels', 'ids' or 'progress/<record>'; ``detail``: the first
    block's error."""

    kind: str
    array: str
    rows: tuple[int, int]
    blocks: tuple[int, int]
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``state`` sums it up."""

    path: str
    status: str  # the root attribute: 'complete' once sealed
    n_blocks: int
    blocks_done: int = 0  # recorded done (a block whose record does not read is not counted)
    problems: list[Problem] = field(default_factory=list)
    chunks: int = 0  # chunks checked: read, or counted as part of a block not done
    unchecked: list[str] = field(default_factory=list)  # arrays without a crc32c checksum
    reset_blocks: list[int] = field(default_factory=list)  # marked not done by ``repair``
    stats_problems: list[tuple[str, str]] = field(default_factory=list)  # (array, what)
    stats_dropped: list[str] = field(default_factory=list)  # removed by ``repair``
    cluster_problems: list[tuple[str, str]] = field(default_factory=list)  # (array, what)
    clusters_dropped: list[str] = field(default_factory=list)  # results removed by ``repair``
    metadata: list[MetaProblem] = field(default_factory=list)  # missing or wrong zarr.json
    metadata_restored: list[str] = field(default_factory=list)  # rewritten by ``repair``
    read: bool = True  # False: the metadata kept the blocks from being read

    @property
    def repairable(self) -> bool:
        """False when the root attributes themselves are damaged."""
        return all(p.repairable for p in self.metadata)

    @property
    def damaged(self) -> bool:
        if self.stats_problems or self.cluster_problems or self.metadata:
            return True
        return any(p.kind in DAMAGE for p in self.problems)

    @property
    def state(self) -> str:
        """'complete', 'complete-but-unsealed' (every block done but the status is not
        'complete': a run killed after its last write), 'incomplete' or 'damaged'."""
        if self.damaged:
            return "damaged"
        if self.blocks_done < self.n_blocks:
            return "incomplete"
        return "complete" if self.status == "complete" else "complete-but-unsealed"

    @property
    def ok(self) -> bool:
        return self.state == "complete"


def format_verify(report: VerifyReport) -> str:
    """The report as terminal text: a headline, one line per problem range, what to do."""
    done = f"{report.blocks_done}/{report.n_blocks} blocks done"
    if not report.read:
        done = "no block read (the metadata must be mended first)"
    resume = "`actextract extract ... --resume`"
    head = {
        "complete": f"complete: {done}, every chunk reads back.",
        "complete-but-unsealed": f"complete but not sealed (status '{report.status}'): {done}; "
        f"{resume} seals it.",
        "incomplete": f"incomplete (status '{report.status}'): {done}.",
        "damaged": f"DAMAGED: {done}; {sum(p.kind in DAMAGE for p in report.problems)} "
        f"damaged row ranges, {len(report.metadata)} damaged metadata files, "
        f"{len(report.stats_problems)} damaged arrays of statistics, "
        f"{len(report.cluster_problems)} of clustering results.",
    }[report.state]
    lines = [f"{report.path}: {head}"]
    if report.metadata_restored:
        lines.append(
            f"rewrote the metadata of {', '.join(report.metadata_restored)} from the root "
            "attributes; their chunks were then read."
        )
    for m in report.metadata:
        lines.append(f"  {m.path or 'zarr.json (root attributes)'}: {m.what}.")
    if not report.repairable:
        lines.append(
            "The root attributes (zarr.json) are damaged: they are the record of the run that "
            "every other file is checked against, so this store cannot be repaired. Restore its "
            "zarr.json from a copy, or extract again into a new store (--overwrite)."
        )
        return "\n".join(lines)
    if report.metadata:
        lines.append(
            "`actextract verify --repair` rewrites these metadata files from the root "
            "attributes, reads the chunks, and marks the blocks whose chunks are missing not "
            f"done; {resume} then redoes them."
        )
    for p in report.problems:
        first, stop = p.blocks
        blocks = f"block {first}" if stop - first == 1 else f"blocks {first}-{stop - 1}"
        array = "all arrays" if p.array == EVERY_ARRAY else p.array
        where = f"  {array}: rows {p.rows[0]}-{p.rows[1] - 1} ({blocks})"
        if p.kind == "not-done":
            lines.append(f"{where}: not written yet; resume with {resume}.")
        else:
            detail = p.detail if len(p.detail) <= 100 else p.detail[:97] + "..."
            lines.append(f"{where}: {p.kind} ({detail}); these rows must be extracted again.")
    for path, what in report.stats_problems:
        lines.append(f"  {path}: damaged statistics ({what}).")
    if report.stats_problems and not report.stats_dropped:
        lines.append(
            "The damaged statistics are dropped by --repair; the blocks they summed are summed "
            f"again by {resume}, which also rewrites the totals."
        )
    if report.stats_dropped:
        lines.append(
            f"dropped {', '.join(report.stats_dropped)}: {resume} sums those blocks again and "
            "rewrites the totals."
        )
    for path, what in report.cluster_problems:
        lines.append(f"  {path}: damaged clustering result ({what}).")
    if report.clusters_dropped:
        lines.append(
            f"deleted {', '.join(report.clusters_dropped)}: run `actextract cluster` with the "
            "same settings to make it again."
        )
    elif report.cluster_problems:
        lines.append(
            "`actextract verify --repair` deletes the damaged clustering results; `actextract "
            "cluster` with the same settings makes them again."
        )
    if report.reset_blocks:
        lines.append(
            f"{len(report.reset_blocks)} damaged blocks marked not done: {resume} redoes them."
        )
    elif any(p.kind in DAMAGE for p in report.problems):
        lines.append(
            f"`actextract verify --repair` marks them not done; {resume} then redoes them."
        )
    if report.unchecked:
        lines.append(
            f"no crc32c checksum in {', '.join(report.unchecked)}: a flipped bit there would "
            "read back as valid data."
        )
    return "\n".join(lines)
