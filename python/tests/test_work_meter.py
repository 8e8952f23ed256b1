"""Unit tests of the work-time meter (bulsajo.torch._WorkMeter): what a
rank reports for straggler detection.  A scripted clock stands in for
time.monotonic.

    PYTHONPATH=python /usr/bin/python3 -m unittest tests.test_work_meter
"""

import unittest

from tests.test_live_agent import have_torch


class ClockedMeterCase(unittest.TestCase):
    """A CPU meter read by a scripted clock (self.t)."""

    def setUp(self):
        import bulsajo.torch as bj
        self.bj = bj
        self.t = 100.0
        self._now = bj._now
        bj._now = lambda: self.t
        self.m = bj._WorkMeter(False)

    def tearDown(self):
        self.bj._now = self._now


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class WorkMeterTest(ClockedMeterCase):

    def step(self, compute, wait, committed=True, buckets=2):
        """One step: compute s of work, the last bucket ready at its end,
        the all-reduce completing wait s later."""
        m = self.m
        m.begin()
        for i in range(buckets):
            self.t += compute / buckets
            m.bucket_ready()
            if i < buckets - 1:
                m.bucket_reduced()  # an earlier bucket, done while computing
        self.t += wait
        m.bucket_reduced()
        return m.end(committed)

    def test_warmup_skipped_then_one_report_a_second(self):
        reps = [self.step(0.1, 0.15) for _ in range(3 + 12)]
        # 3 warm-up steps, then 0.25 s steps: the report comes with the step
        # that ends >= 1 s after the warm-up.
        self.assertEqual(reps[:3], [None] * 3)
        got = [r for r in reps if r is not None]
        self.assertIn(len(got), (2, 3))
        self.assertIn(got[0]["steps"], (4, 5))
        for r in got:
            self.assertAlmostEqual(r["wall_s"], 0.25 * r["steps"], places=5)
            self.assertAlmostEqual(r["work_s"], 0.1 * r["steps"], places=5)  # the waits are left out

    def test_failed_steps_are_not_counted(self):
        for _ in range(3):
            self.step(0.1, 0.0)
        self.assertIsNone(self.step(0.5, 0.5, committed=False))
        # The next committed step is due (a second passed): it alone is in
        # the report, the failed one's time is not.
        r = self.step(0.2, 0.0)
        self.assertEqual(r["steps"], 1)
        self.assertAlmostEqual(r["work_s"], 0.2, places=5)
        self.assertAlmostEqual(r["wall_s"], 0.2, places=5)

    def test_explicit_collective_wait_and_reset(self):
        for _ in range(3):
            self.step(0.1, 0.0)
        self.m.begin()
        self.t += 0.3
        self.m.waited += 0.8  # Job.all_reduce blocked this long
        self.t += 0.8
        r = self.m.end(True)
        self.assertAlmostEqual(r["work_s"], 0.3, places=5)
        self.assertAlmostEqual(r["wall_s"], 1.1, places=5)
        self.m.reset()  # a new group: warm-up again
        self.assertEqual([self.step(0.5, 0.0) for _ in range(3)], [None] * 3)

    def test_no_hook_counts_the_whole_step(self):
        for _ in range(3):
            self.step(0.1, 0.0)
        self.m.begin()
        self.t += 1.2
        r = self.m.end(True)
        self.assertAlmostEqual(r["work_s"], 1.2, places=5)


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class BatchTimeTest(ClockedMeterCase):
    """A step's time times its world (the whole batch's time): what a
    member puts in the agreement row for _heal_pays. It spans regroups."""

    def step(self, wall, world, committed=True):
        self.m.begin()
        self.t += wall
        self.m.end(committed, world)

    def test_median_over_worlds_and_regroups(self):
        self.assertEqual(self.m.batch_time(), 0.0)
        for _ in range(3):
            self.step(9.0, 4)  # warm-up: left out
        for _ in range(5):
            self.step(0.1, 4)  # 0.4 s for the batch
        self.step(5.0, 4, committed=False)  # a failed step: left out
        self.m.reset()  # a regroup to 3: warms up again, keeps the times
        for _ in range(3):
            self.step(9.0, 3)
        self.assertAlmostEqual(self.m.batch_time(), 0.4)
        for _ in range(6):
            self.step(0.15, 3)  # 0.45 s for the batch
        self.assertAlmostEqual(self.m.batch_time(), 0.45)
        for _ in range(100):
            self.step(0.2, 2)  # bounded: the last 32 only
        self.assertEqual(len(self.m.batch_walls), 32)
        self.assertAlmostEqual(self.m.batch_time(), 0.4)


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class HealPaysTest(unittest.TestCase):
    """_heal_pays: a grow's k joiners heal when the members' extra compute
    in the healing step (k*batch/(N*(N-k))) costs no more than stopping
    them for the state (its holders' price)."""

    @staticmethod
    def row(needs, batch_us, send_us):
        import bulsajo.torch as bj
        r = [0] * (bj._ROW_SEND_US + 1)
        r[1], r[bj._ROW_BATCH_US], r[bj._ROW_SEND_US] = needs, batch_us, send_us
        return r

    def test_table(self):
        import bulsajo.torch as bj
        R = self.row
        cases = [
            # (name, rows, k, want heal, want estimate [extra ms, send ms])
            ("small transformer: a third of a step against a small state",
             [R(0, 760000, 9000)] * 3 + [R(1, 0, 0)], 1, False, [63.33, 9.0]),
            ("mlp: even, heals when the extra is no more",
             [R(0, 68000, 6000)] * 3 + [R(1, 0, 0)], 1, True, [5.67, 6.0]),
            ("mlp: a cheaper state is sent first",
             [R(0, 68000, 5000)] * 3 + [R(1, 0, 0)], 1, False, [5.67, 5.0]),
            ("large world, large state: heal",
             [R(0, 256 * 1000000, 4000000)] * 255 + [R(1, 0, 0)], 1, True, [3.92, 4000.0]),
            ("large world, a tiny state, heavy steps",
             [R(0, 256 * 1000000, 1000)] * 255 + [R(1, 0, 0)], 1, False, [3.92, 1.0]),
            ("two joiners of 4: 2/(4*2) of the batch",
             [R(0, 400000, 30000)] * 2 + [R(1, 0, 0)] * 2, 2, False, [100.0, 30.0]),
            ("the median holder's batch, the dearest holder's send",
             [R(0, 100000, 1000), R(0, 900000, 2000), R(0, 200000, 40000), R(1, 0, 0)],
             1, True, [16.67, 40.0]),
            ("joiners' rows are not timings",
             [R(0, 120000, 1000)] * 3 + [R(1, 1, 99999999)], 1, False, [10.0, 1.0]),
            ("no step timed yet: heal", [R(0, 0, 5000)] * 3 + [R(1, 0, 0)], 1, True, None),
        ]
        for name, rows, k, want, est in cases:
            with self.subTest(name):
                pays, got = bj._heal_pays(rows, k, len(rows))
                self.assertEqual(pays, want, got)
                if est is None:
                    self.assertIsNone(got)
                else:
                    self.assertEqual(got, est)
