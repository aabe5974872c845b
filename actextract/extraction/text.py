"""The terminal view of a run: its end-of-run summary, and what one process did."""

from __future__ import annotations

from typing import Any

from actextract.core.text import layer_counts, samples_word

__all__ = ["format_summary", "run_report"]


def format_summary(attrs: dict, run: dict | None = None) -> str:
    """The end-of-run text, from a store's attributes (``summary``, ``skipped``); with ``run``
    (``Store.this_run``: what this process did), its own numbers, and what is left to do when
    it computed nothing or left the store incomplete (other shards still writing)."""
    if run is not None and not run["computed"]:
        return _nothing_to_do(attrs, run)
    s = (run["summary"] if run is not None else attrs.get("summary")) or {}
    total = max(s.get("seconds", 0.0), 1e-9)

    def part(key: str) -> str:
        return f"{s.get(key, 0.0):.2f} s ({100 * s.get(key, 0.0) / total:.0f}%)"

    lines = [
        f"{s.get('images', 0)} {samples_word(attrs)} in {s.get('seconds', 0.0):.2f} s "
        f"({s.get('images_per_s', 0.0):,.1f} {samples_word(attrs)}/s), "
        f"{s.get('bytes_written', 0) / 1e6:,.1f} MB of activations written",
        f"time: waiting for data {part('data_wait_s')}, compute {part('compute_s')}, "
        f"device→host {part('d2h_s')}, waiting for the writer {part('write_wait_s')}; "
        f"{s.get('mb_per_s', 0.0):,.1f} MB/s written (uncompressed)",
    ]
    skipped = attrs.get("skipped") or []
    count = attrs.get("skipped_count", len(skipped)) or s.get("skipped", 0)  # this shard's
    if count:
        ids = ", ".join(str(b["id"]) for b in skipped[:10])
        more = f" (+{count - 10} more)" if count > 10 and ids else ""
        lines.append(f"skipped {count} bad samples" + (f": {ids}{more}" if ids else ""))
    nonfinite = {k: v for k, v in (attrs.get("nonfinite") or s.get("nonfinite") or {}).items() if v}
    if nonfinite:
        lines.append(
            f"rows with NaN or Inf, per layer: {layer_counts(nonfinite)} (stored as they are; "
            "--on-nonfinite error stops at the first)"
        )
    if run is not None and attrs.get("status") != "complete":
        who = "this run" if run["count"] == 1 else f"shard {run['shard']}"
        lines.append(f"{who} wrote its {_blocks(run['blocks'])}; {_store_state(attrs, run)}")
    return "\n".join(lines)


def run_report(store: Any, shard: Any, blocks: int, computed: int, summary: dict) -> dict:
    """``Store.this_run``: what one process did (``blocks`` dealt to ``shard``, ``computed`` of
    them, its ``summary``) and the store's row blocks done, for :func:`format_summary`."""
    done = store.done()
    return {
        **dict(shard=str(shard), count=shard.count, blocks=blocks, computed=computed),
        **dict(done=int(done.sum()), n_blocks=len(done), chunk_rows=store.chunk_rows),
        "summary": summary,
    }


def _blocks(n: int) -> str:
    return f"{n} row block{'s' * (n != 1)}"


def _store_state(attrs: dict, run: dict) -> str:
    """The store's state, after a process that did not necessarily finish it."""
    if attrs.get("status") == "complete":
        return "the store is complete"
    state = f"the store is {attrs.get('status')}: {run['done']} of {_blocks(run['n_blocks'])} done"
    if run["count"] > 1:
        return state + " (the other shards write the rest; the last to finish completes it)"
    return state + "; run the same command with --resume to finish it"


def _nothing_to_do(attrs: dict, run: dict) -> str:
    """What a process that computed no block says: it was dealt none, or all were done."""
    state = _store_state(attrs, run)
    if not run["blocks"]:
        return (
            f"nothing to do: shard {run['shard']} was dealt no row blocks (the store has "
            f"{_blocks(run['n_blocks'])} of {run['chunk_rows']} rows for {run['count']} "
            f"shards; use fewer shards or a smaller --chunk-rows); {state}"
        )
    who = "this run" if run["count"] == 1 else f"shard {run['shard']}"
    return (
        f"nothing left to do: every row block of {who} ({_blocks(run['blocks'])}) was "
        f"already written; {state}"
    )
