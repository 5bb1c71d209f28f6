"""pytest plugin: log each case of the reliability test files and write the reliability report.

Loaded by ``pytest_plugins = ["tests.conftest_reliability"]`` in those files (not a conftest.py, so it is
active only when one of them is collected).
"""

from __future__ import annotations

from typing import Any

import pytest

from . import reliability as rel


def _logged(item: pytest.Item) -> bool:
    return item.path.name in rel.AREAS


def _expected(item: pytest.Item) -> str:
    fn = getattr(item, "function", None)
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _reason(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(getattr(rep, "wasxfail", "") or lr or "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    if _logged(item):
        rel.start(item.nodeid, _expected(item))
    try:
        return (yield)
    finally:
        if _logged(item) and rel.CASES.get(item.nodeid) and not rel.CASES[item.nodeid].result:
            rel.finish(item.nodeid, "FAIL: no outcome recorded")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    rep: pytest.TestReport = yield
    if not _logged(item):
        return rep
    result = None
    if rep.when == "setup":
        if rep.skipped:
            result = f"skipped: {_reason(rep)}"
        elif rep.failed:
            result = "FAIL: error in setup"
    elif rep.when == "call":
        if rep.skipped and hasattr(rep, "wasxfail"):
            result = f"known bug: {rep.wasxfail}"
        elif rep.skipped:
            result = f"skipped: {_reason(rep)}"
        elif rep.failed and "XPASS(strict)" in str(rep.longrepr):
            result = "FAIL: passes although marked as a known bug (fixed? remove the xfail mark)"
        elif rep.failed:
            msg = call.excinfo.exconly() if call.excinfo is not None else "failed"
            result = "FAIL: " + " ".join(msg.split())[:300]
        else:
            result = "pass"
    elif rep.when == "teardown" and rep.failed:
        result = "FAIL: error in teardown"
    if result is not None:
        rel.finish(item.nodeid, result)
    return rep


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.passed and report.nodeid.rsplit("/", 1)[-1] in rel.AREAS:
        ids = rel.COLLECTED.setdefault(report.nodeid, set())
        ids.update(i.nodeid for i in report.result if isinstance(i, pytest.Item))


def pytest_sessionfinish(session: pytest.Session) -> None:
    rel.write_report()
