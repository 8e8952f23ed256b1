"""bulsajo.torch.State wraps optimizer.step; an LR scheduler made before or
after it must neither warn nor lose its step counting.

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest tests.test_state
"""

import unittest
import warnings

from tests.test_live_agent import have_torch


class _StubJob(object):
    """What State's wrapper reads from a job: inside a step, live, broken?"""

    def __init__(self, broken):
        self._in_step = True
        self.live = True
        self._broken = broken
        self._opt_called = self._applied = self._skipped = False

    def _finish_heal(self, keep_grads):
        return True  # not a healing joiner


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class SchedulerWithStateTest(unittest.TestCase):
    def setUp(self):
        import torch
        from bulsajo import torch as bj
        self.torch, self.bj = torch, bj

    def make(self, order):
        torch = self.torch
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if order == "scheduler first":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            state = self.bj.State(model=model, optimizer=opt)
        else:
            state = self.bj.State(model=model, optimizer=opt)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, opt, sched, state

    def train(self, model, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            model(self.torch.ones(2, 4)).sum().backward()
            opt.step()
            sched.step()

    def test_no_warning_and_the_schedule_advances(self):
        for order in ("scheduler first", "state first"):
            with self.subTest(order=order):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model, opt, sched, _ = self.make(order)
                    before = model.weight.detach().clone()
                    self.train(model, opt, sched, 4)
                msgs = [str(w.message) for w in caught if "optimizer.step()" in str(w.message)]
                self.assertEqual(msgs, [])
                self.assertFalse(self.torch.equal(before, model.weight), "optimizer.step() did nothing")
                # StepLR(step_size=2, gamma=0.5) after 4 steps: 1.0 * 0.5 * 0.5
                self.assertAlmostEqual(opt.param_groups[0]["lr"], 0.25)
                self.assertEqual(sched.last_epoch, 4)

    def test_failed_step_is_still_skipped(self):
        # The wrapper still decides: in a live step that failed, no update.
        for order in ("scheduler first", "state first"):
            with self.subTest(order=order):
                model, opt, sched, state = self.make(order)
                before = model.weight.detach().clone()
                state._job = _StubJob(broken="all-reduce failed")
                model(self.torch.ones(2, 4)).sum().backward()
                opt.step()
                self.assertTrue(self.torch.equal(before, model.weight))
                self.assertTrue(state._job._skipped and state._job._opt_called)
                state._job = _StubJob(broken=None)
                opt.step()
                self.assertFalse(self.torch.equal(before, model.weight))
                self.assertTrue(state._job._applied)


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class HealIdentityTest(unittest.TestCase):
    """A healing joiner's job.all_reduce contribution is the op's identity:
    the others' result comes out unchanged."""

    def test_identity_per_op_and_dtype(self):
        import torch
        import torch.distributed as dist
        from bulsajo import torch as bj
        R = dist.ReduceOp
        cases = [
            (R.SUM, torch.float32, 0.0), (R.SUM, torch.int64, 0),
            (R.PRODUCT, torch.float32, 1.0), (R.PRODUCT, torch.int64, 1),
            (R.MIN, torch.float32, torch.finfo(torch.float32).max),
            (R.MIN, torch.int64, torch.iinfo(torch.int64).max),
            (R.MAX, torch.float64, -torch.finfo(torch.float64).max),
            (R.MAX, torch.int32, torch.iinfo(torch.int32).min),
        ]
        for op, dtype, want in cases:
            with self.subTest(op=str(op), dtype=str(dtype)):
                t = torch.full((3,), 7, dtype=dtype)
                bj._fill_identity(t, op)
                self.assertTrue(torch.equal(t, torch.full((3,), want, dtype=dtype)), t)


if __name__ == "__main__":
    unittest.main()
