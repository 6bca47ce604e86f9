"""The store against a plain Python model: a dict of lists of values.

Hypothesis drives appends, batches, transactions (committed and rolled
back), commits, seals and close-and-reopen cycles through the durability
modes, on small segments with some large values so segments roll. After
every step both the writer and a read-only handle opened once on the same
path must agree with the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aoflite

MiB = 1 << 20
KEYS = ["a", "b", "ключ", "k" * 600]
MODES = ["normal", "full", "off"]

keys = st.sampled_from(KEYS)
# mostly small values, some up to 64 KiB so a 1 MiB segment rolls every few steps
values = st.one_of(
    st.binary(max_size=32),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(32 << 10, 64 << 10), st.integers(0, 255)),
)


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aoflite-model-")
        self.path = os.path.join(self.dir, "store")
        self.reopens = 0
        self.db = self._open_writer()
        self.reader = aoflite.open(self.path, readonly=True)
        self.model: dict[str, list[bytes]] = {}
        self.feed: list[tuple[str, int, bytes]] = []  # every record in append order
        self.unsealed = False  # records appended since the last seal()

    def _open_writer(self):
        return aoflite.open(self.path, durability=MODES[self.reopens % len(MODES)], segment_bytes=MiB)

    def _appended(self, key, vals):
        log = self.model.setdefault(key, [])
        self.feed.extend((key, len(log) + i, v) for i, v in enumerate(vals))
        log.extend(vals)
        self.unsealed = self.unsealed or bool(vals)

    def teardown(self):
        self.db.close()
        self.reader.close()
        shutil.rmtree(self.dir)

    # ---------------------------------------------------------------- rules

    @rule(key=keys, value=values)
    def append(self, key, value):
        assert self.db.append(key, value) == len(self.model.get(key, []))
        self._appended(key, [value])

    @rule(key=keys, vals=st.lists(values, max_size=6))
    def append_many(self, key, vals):
        n = len(self.model.get(key, []))
        assert self.db.append_many(key, vals) == range(n, n + len(vals))
        self._appended(key, vals)

    @rule(ops=st.lists(st.tuples(keys, values), max_size=6), fail=st.booleans())
    def transaction(self, ops, fail):
        try:
            with self.db.transaction():
                for key, value in ops:
                    self.db.append(key, value)
                if fail:
                    raise Rollback
        except Rollback:
            return
        for key, value in ops:
            self._appended(key, [value])

    @rule()
    def commit(self):
        last = max((self.db.last(k).lsn for k, log in self.model.items() if log), default=0)
        assert self.db.commit() == last

    @rule()
    def seal(self):
        sid = self.db.seal()
        if not self.unsealed:
            assert sid is None
        if sid is not None:
            assert self.db.manifest.segment(sid).state == "sealed"
        assert self.db.seal() is None
        self.unsealed = False

    @precondition(lambda self: self.reopens < 6)
    @rule()
    def reopen(self):
        self.db.close()
        self.reopens += 1
        self.db = self._open_writer()

    # ----------------------------------------------------------- invariants

    @invariant()
    def handles_agree_with_model(self):
        for db in (self.db, self.reader):
            assert db.keys() == sorted(k for k, v in self.model.items() if v)
            for key in KEYS:
                log = self.model.get(key, [])
                assert db.count(key) == len(log)
                last = db.last(key)
                assert (last is None and not log) or (last.offset, last.value) == (len(log) - 1, log[-1])
                assert [(r.offset, r.value) for r in db.scan(key)] == list(enumerate(log))
                if log:
                    assert db.read(key, 0).value == log[0]
            feed = list(db.scan_all())
            assert all(a.lsn < b.lsn for a, b in zip(feed, feed[1:])), "scan_all is not in LSN order"
            assert [(r.key, r.offset, r.value) for r in feed] == self.feed
            if feed:
                middle = feed[len(feed) // 2]
                assert list(db.scan_all(middle.lsn)) == feed[len(feed) // 2 :]


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
