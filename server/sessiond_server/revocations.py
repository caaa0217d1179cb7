"""The revocation feed: the revocation log, polled and fanned out to watchers.

Every daemon polls the log table, so a revoke made through any replica
reaches the watchers of every replica within one poll interval. A revoke
made through this daemon wakes the poller at once.

Sequence numbers come from AUTO_INCREMENT on MySQL, which are taken at
INSERT and become visible at COMMIT, so a poll may see seq 11 before seq 10
commits. The feed keeps a watermark: every seq up to it has been delivered,
or was missing for longer than GAP_TIMEOUT_MS and is taken to be rolled
back. Each poll reads again from the watermark, and watchers resume from
it, so a late commit is still delivered, at the cost of some duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .storage import Revocation, Storage

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
HEARTBEAT_S = 1.0
# A seq missing for this long is taken to be a rolled-back INSERT (or a gap
# from auto_increment_increment above 1). A revoking transaction writes the
# log row last and commits right after, so it is an estimate with a wide margin.
GAP_TIMEOUT_MS = 10_000
PAGE_SIZE = 1000
# Watchers get no message, not even a heartbeat, once the last successful
# poll is older than this, so a daemon cut off from the database cannot
# vouch for a stream that misses revokes made through other replicas.
FRESH_POLL_S = 1.0
# At start, the newest this many sequence numbers are checked for gaps, so a
# revoke that was committing while the daemon started is still delivered.
START_LOOKBACK = 1000
# Gaps tracked above the watermark at most, so that a jump in AUTO_INCREMENT
# cannot make every poll walk millions of numbers.
MAX_TRACKED_GAP = 100_000
# Slack on top of the access token validity and the leeway before a log row
# can no longer concern a valid token, for clocks that differ between hosts.
RETENTION_SLACK_MS = 60_000


@dataclass(frozen=True)
class FeedBatch:
    """The next message for a watcher: new revocations and the resume point after them."""

    revocations: list[Revocation]
    resume_after_seq: int


class RevocationFeed:
    """Poll the revocation log in a thread and hand new rows to watchers."""

    def __init__(
        self,
        storage: Storage,
        *,
        retention_ms: int,
        clock: Callable[[], int],
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._storage = storage
        self._retention_ms = retention_ms
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._condition = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._loaded = False
        # Delivered revocations in delivery order. _offset counts the ones
        # already trimmed from the front, so positions stay valid.
        self._events: list[Revocation] = []
        self._offset = 0
        self._watermark = 0
        # Sequence numbers above the watermark: delivered, and missing with
        # the time (ms) the gap was first noticed.
        self._seen_above: set[int] = set()
        self._missing_since: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._watchers = 0
        # The poller thread and a new watcher may both poll.
        self._poll_lock = threading.Lock()
        self._last_poll_ok_s = -math.inf

    @property
    def retention_ms(self) -> int:
        return self._retention_ms

    def start(self) -> None:
        """Load the retained log, then keep polling in a daemon thread."""
        self.poll()
        self._thread = threading.Thread(
            target=self._run, name="revocation-feed", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Poll now instead of at the next interval, after a local revoke."""
        self._wake.set()

    def close(self) -> None:
        """Stop polling and end every watcher's stream."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._closed:
            self._wake.wait(self._poll_interval_s)
            self._wake.clear()
            if self._closed:
                return
            if not self._watchers:
                # Polls without watchers would keep every pooled connection busy.
                continue
            try:
                self.poll()
            except Exception as exc:
                # The database is down or a query failed: watchers keep
                # their stream and get heartbeats, and polling goes on.
                if not failing:
                    logger.warning("revocation log poll failed error=%s", exc)
                failing = True
                continue
            if failing:
                logger.info("revocation log poll works again")
            failing = False

    def _read_after(self, after_seq: int, oldest_ms: int) -> list[Revocation]:
        rows: list[Revocation] = []
        while True:
            page = self._storage.read_revocations(after_seq, oldest_ms, PAGE_SIZE)
            rows.extend(page)
            if len(page) < PAGE_SIZE:
                return rows
            after_seq = page[-1].seq

    def poll(self) -> None:
        """Read log rows after the watermark and deliver the ones not seen yet."""
        with self._poll_lock:
            self._poll()
            self._last_poll_ok_s = time.monotonic()

    def _poll(self) -> None:
        now_ms = self._clock()
        oldest_ms = now_ms - self._retention_ms
        if not self._loaded:
            # Rows older than the retention are left out of the read, so only
            # the newest numbers can hide a revoke that is still committing.
            rows = self._read_after(0, oldest_ms)
            start_floor = max(0, self._storage.max_revocation_seq() - START_LOOKBACK)
            # Rows past the retention are not delivered, but they are no gap.
            expired = {
                row.seq
                for row in self._read_after(start_floor, 0)
                if row.revoked_at_ms <= oldest_ms
            }
            with self._condition:
                self._watermark = start_floor
                self._seen_above.update(expired)
                self._loaded = True
        else:
            rows = self._read_after(self._watermark, oldest_ms)
        with self._condition:
            # The first load also delivers rows at or below the watermark.
            # Later polls read above it, where _seen_above has what the
            # feed already delivered.
            fresh = [row for row in rows if row.seq not in self._seen_above]
            self._events.extend(fresh)
            self._seen_above.update(
                row.seq for row in fresh if row.seq > self._watermark
            )
            self._advance_watermark(now_ms)
            self._trim(oldest_ms)
            if fresh:
                self._condition.notify_all()

    def _advance_watermark(self, now_ms: int) -> None:
        if not self._seen_above:
            self._missing_since.clear()
            return
        highest = max(self._seen_above)
        if highest - self._watermark > MAX_TRACKED_GAP:
            logger.warning(
                "revocation log gap too wide, skipped from_seq=%d to_seq=%d",
                self._watermark + 1,
                highest - MAX_TRACKED_GAP,
            )
            self._watermark = highest - MAX_TRACKED_GAP
            self._seen_above = {
                seq for seq in self._seen_above if seq > self._watermark
            }
            self._missing_since = {
                seq: since
                for seq, since in self._missing_since.items()
                if seq > self._watermark
            }
        for seq in range(self._watermark + 1, highest):
            if seq not in self._seen_above:
                self._missing_since.setdefault(seq, now_ms)
        while self._watermark < highest:
            following = self._watermark + 1
            if following in self._seen_above:
                self._seen_above.discard(following)
            elif now_ms - self._missing_since[following] >= GAP_TIMEOUT_MS:
                logger.debug("revocation log gap given up seq=%d", following)
            else:
                break
            self._missing_since.pop(following, None)
            self._watermark = following

    def _trim(self, oldest_ms: int) -> None:
        drop = 0
        while (
            drop < len(self._events) and self._events[drop].revoked_at_ms <= oldest_ms
        ):
            drop += 1
        if drop:
            del self._events[:drop]
            self._offset += drop

    def watch(
        self, after_seq: int, heartbeat_s: float = HEARTBEAT_S
    ) -> Iterator[FeedBatch]:
        """Yield batches for one watcher until the feed closes.

        The first batch contains every retained revocation with seq above
        after_seq. Later ones contain what arrived since the previous batch, or
        nothing when heartbeat_s passes without news. While the last good
        poll is older than FRESH_POLL_S, nothing is sent at all.
        """
        with self._condition:
            self._watchers += 1
        try:
            # The poller skips polls while there are no watchers, so catch up first.
            # A failure is logged by the poller, and leaves the feed stale.
            with contextlib.suppress(Exception):
                self.poll()
            self._wake.set()
            yield from self._batches(after_seq, heartbeat_s)
        finally:
            with self._condition:
                self._watchers -= 1

    def _fresh(self) -> bool:
        """Return whether a poll succeeded recently enough for watchers to trust the feed."""
        return time.monotonic() - self._last_poll_ok_s <= FRESH_POLL_S

    def _batches(self, after_seq: int, heartbeat_s: float) -> Iterator[FeedBatch]:
        with self._condition:
            position = self._offset
            first = True
            while not self._closed:
                idle = not first and position == self._offset + len(self._events)
                if idle or not self._fresh():
                    self._condition.wait(heartbeat_s)
                    if self._closed:
                        return
                    if not self._fresh():
                        # No heartbeat while the log cannot be read: the
                        # watcher then stops trusting the stream.
                        continue
                start = max(position, self._offset) - self._offset
                batch = self._events[start:]
                position = self._offset + len(self._events)
                if first:
                    batch = [row for row in batch if row.seq > after_seq]
                    first = False
                watermark = self._watermark
                self._condition.release()
                try:
                    yield FeedBatch(batch, watermark)
                finally:
                    self._condition.acquire()


def retention_ms(access_token_validity_s: int, clock_skew_leeway_s: int) -> int:
    """Return how long a log row can concern a valid access token, in ms."""
    return (access_token_validity_s + clock_skew_leeway_s) * 1000 + RETENTION_SLACK_MS
