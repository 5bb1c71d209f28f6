"""QC and release: every test sampled at once, the verdict on results in hand, QA review and the QP's
release once blocking deviations are closed (rules 9 to 11)."""

from __future__ import annotations

from typing import Any

from ..distributions import Stream
from . import rules
from .base import ModelBase, Proc
from .entities import Batch, Outcome, Patient


class Release(ModelBase):
    def _analyst_done(self, b: Batch, test: str, sampled: float, start: float) -> None:
        self.analysts.release(1)
        self.staff_use(self.analysts, 1, b, f"qc:{test}", sampled, start)

    def qc_plan(self, t: Any) -> tuple[Stream, Stream, float, bool]:
        """A test's duration and failure streams, hands-on days and whether release waits for it: looked
        up once per test name (seven tests a batch ask on every batch)."""
        got = self._qc_plans.get(t.name)
        if got is None:
            got = (self.stream(f"qc:{t.name}", t.duration), self.stream(f"qcfail:{t.name}"), t.hands_on_hours / 24.0,
                   t.name in self.required_tests)
            self._qc_plans[t.name] = got
        return got

    def qc_test(self, p: Patient, b: Batch, t: Any) -> Proc:
        env = self.env
        sampled = env.now
        durations, failures, hands, required = self.qc_plan(t)
        dur = durations.sample()
        yield from self.analysts.acquire(1, hands)
        start = env.now
        if dur > hands:
            # the analyst goes back to the pool when set-up ends; the assay runs on without waking us
            env.timeout(hands).callbacks.append(lambda _: self._analyst_done(b, t.name, sampled, start))
            yield env.timeout(dur)
        else:
            yield env.timeout(hands)
            self._analyst_done(b, t.name, sampled, start)
        failed = failures.sample() < t.failure_probability
        self.record.qc_result(b.coi, b.batch_no, t.name, sampled, start, env.now, "fail" if failed else "pass",
                              required)
        if failed and b.released is not None:
            # released on conditional terms: a late positive means notice to the clinic and a recall (rule 10)
            b.recalled = True
            self.deviation(b, p, f"late_{t.name}_failure", "critical", "post_release",
                           f"{t.name} failed after conditional release; clinic notified, recall opened")
        return failed

    def qc_verdict(self, p: Patient, b: Batch, tests: dict[str, Any], handled: set[str]) -> Outcome | None:
        """Act on every failed result in hand not yet acted on: a deviation each, then the gravest
        consequence; an out-of-specification product follows the OOS policy (rule 11). None: go on."""
        consequences = set()
        for name, (t, ev) in tests.items():
            if name in handled or not ev.triggered:
                continue
            handled.add(name)
            if ev.value:
                sev = "critical" if t.sterility else "major"
                self.deviation(b, p, f"oos_{name}", sev, "qc_release", f"{name} out of specification")
                consequences.add(t.consequence)
        if "discard" in consequences:
            b.status, b.failure_reason = "failed", "qc_failure_discard"
            self.lose(p, "manufacturing_failure")
            return Outcome.LOST
        if "recollect" in consequences:
            b.status, b.failure_reason = "failed", "qc_failure"
            return Outcome.RECOLLECT
        if ("oos" in consequences or b.oos) and b.release_mode != "exceptional_oos":
            b.oos = True
            if self.sc.gmp.oos_policy == "exceptional_release" and (
                self.stream("exceptional_release").sample() < self.sc.gmp.exceptional_release_probability
            ):
                b.release_mode = "exceptional_oos"
                self.deviation(b, p, "exceptional_release", "minor", "qc_release",
                               "OOS product supplied at physician's request; risk assessment and authority notice "
                               "on file")
            else:
                b.status, b.failure_reason = "failed", "oos_rejected"
                return Outcome.RECOLLECT
        return None

    def qa_review(self, b: Batch) -> Proc:
        """A reviewer's hands-on time within the review's elapsed time (batch record, deviations, results)."""
        env, sc = self.env, self.sc
        hands = sc.release.qa_review_hours / 24.0
        elapsed = self.stream("qa_review", sc.release.qa_review_elapsed).sample()
        requested = env.now
        yield from self.reviewers.acquire(1, hands)
        start = env.now
        yield env.timeout(hands)
        self.reviewers.release(1)
        self.staff_use(self.reviewers, 1, b, "qa_review", requested, start)
        if elapsed > env.now - requested:
            yield env.timeout(elapsed - (env.now - requested))

    def test_and_release(self, p: Patient, b: Batch) -> Proc:
        """All tests sampled at once; the QP releases after the required results, a clean verdict, a QA
        review and closed blocking deviations, re-reviewing while new ones are open. With
        ``release.qa_review_during_qc`` the first review runs while the tests incubate; it still counts
        at release only if no blocking deviation was open past the moment it started."""
        env, sc = self.env, self.sc
        p.stage = "qc_release"
        tests = {t.name: (t, env.process(self.qc_test(p, b, t))) for t in sc.qc.tests}
        review = env.process(self.qa_review(b)) if sc.release.qa_review_during_qc else None
        reviewed_from = env.now if review is not None else None  # start of the review that still counts
        needed = [ev for name, (_, ev) in tests.items() if name in self.required_tests]
        if needed:
            yield env.all_of(needed)
        b.qc_complete = env.now
        handled: set[str] = set()
        outcome = self.qc_verdict(p, b, tests, handled)
        if outcome is not None:
            return outcome
        if review is not None:
            yield review
        while True:
            # major/critical deviations must be closed before the QP may release (rule 9)
            closes = self.open_until.get(b.batch_no, 0.0)
            if closes > env.now:
                yield env.timeout(closes - env.now)
            if reviewed_from is None or self.open_until.get(b.batch_no, 0.0) > reviewed_from:
                reviewed_from = env.now
                yield from self.qa_review(b)
            if not self.enter(p, "qc_release"):
                return Outcome.ABANDONED
            if rules.expired(b.expiry, env.now):
                self.deviation(b, p, "expired_before_release", "major", "qc_release", "shelf life ended before release")
                b.status, b.failure_reason = "expired", "expired"
                return Outcome.RECOLLECT
            # a result that came in during review, even one the policy would not wait for, is in hand: the
            # QP cannot sign over a known failure (rule 10); a new deviation means another review once closed
            outcome = self.qc_verdict(p, b, tests, handled)
            if outcome is not None:
                return outcome
            if self.open_until.get(b.batch_no, 0.0) <= env.now:
                break
        b.released = env.now
        b.release_mode = b.release_mode or ("conditional" if sc.release.policy == "conditional" else "full")
        pending = sorted(n for n, (_, ev) in tests.items() if not ev.triggered)
        self.record.release(b.coi, b.batch_no, env.now, b.release_mode, "qualified_person", "released",
                            ";".join(pending))
        b.status = "released"
        return Outcome.RELEASED
