"""Unit tests of the work-time meter (bulsajo.torch._WorkMeter): what a
rank reports for straggler detection.  A scripted clock stands in for
time.monotonic.

    PYTHONPATH=python /usr/bin/python3 -m unittest tests.test_work_meter
"""

import unittest

from tests.test_live_agent import have_torch


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class WorkMeterTest(unittest.TestCase):
    def setUp(self):
        import bulsajo.torch as bj
        self.bj = bj
        self.t = 100.0
        self._now = bj._now
        bj._now = lambda: self.t
        self.m = bj._WorkMeter(False)

    def tearDown(self):
        self.bj._now = self._now

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
