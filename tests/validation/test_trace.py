"""Trace validation: a handful of patients through the real engine with fixed durations, and every
logged time compared with a timeline computed by hand from the scenario's rules.

Day 0 is Monday 2027-01-04 00:00; a time t is day floor(t) at hour 24 * frac(t). Weekdays of the first
four weeks: Mon 0 7 14 21 28, Tue 1 8 15 22, Wed 2 9 16 23, Thu 3 10 17 24, Fri 4 11 18 25,
Sat 5 12 19 26, Sun 6 13 20 27. Hours as day fractions: 07:00 = .291667, 08:00 = .333333,
12:00 = .5, 14:00 = .583333, 15:00 = .625, 15:30 = .645833, 19:00 = .791667, 20:00 = .833333.
The expected numbers below are derived in the comments, not read off a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celltx_mfg.records import RunRecords
from celltx_mfg.simulate import simulate

from .conftest import ALWAYS, WEEKDAYS, build, fixed

TOL = 1e-6


def _referrals(tmp_path: Path, days: list[float]) -> str:
    path = tmp_path / "referrals.csv"
    path.write_text("day\n" + "".join(f"{d}\n" for d in days), encoding="utf-8")
    return str(path)


def _approx(actual: dict[str, float | None], expected: dict[str, float]) -> None:
    for key, want in expected.items():
        got = actual[key]
        assert got is not None and abs(got - want) < TOL, f"{key}: model {got} vs hand-computed {want}"


# ------------------------------------------------------------------------------- slot mode, fresh
def slot_plant(csv: str) -> dict:
    return {
        "name": "trace_slot",
        "horizon_days": 60,
        "warmup_days": 0,
        "seed": 1,
        "demand": {"referrals_csv": csv},
        "sites": [{
            "name": "clinic_a",
            "apheresis_per_day": 1,                 # one chair a day
            "apheresis_duration": fixed(0.25),      # 6 h session
            "inbound_transit": fixed(1.0),          # 1 day by air (REF 1)
            "outbound_transit": fixed(1.0),
            "infusion_slots_per_day": 1,
            "lymphodepletion": fixed(3.0),
            "calendar": "clinic",                   # Mon-Fri from 08:00: collection and infusion at 08:00
        }],
        "booking": {"mode": "slot", "starts_per_day": 1, "start_calendar": "plant_days", "horizon_days": 56,
                    "priority": "fifo", "apheresis_lead_days": 1, "max_attempts": 1},
        "calendars": {
            "day_shift": {"shifts": [{"start_hour": 8, "hours": 8}], "days": WEEKDAYS},   # 08:00-16:00
            "qc_shift": {"shifts": [{"start_hour": 7, "hours": 8}], "days": WEEKDAYS},    # 07:00-15:00
            "clinic": {"shifts": [{"start_hour": 8, "hours": 9}], "days": WEEKDAYS},
            "plant_days": {"shifts": [{"start_hour": 8, "hours": 8}], "days": WEEKDAYS},
        },
        "resources": {
            "suites": 3, "incubators": 3,
            "operators": {"count": 2, "calendar": "day_shift"},
            "qc_analysts": {"count": 1, "calendar": "qc_shift"},
            "qa_reviewers": {"count": 1, "calendar": "day_shift"},
        },
        "products": {"cart": {"steps": [
            {"name": "activation", "duration": fixed(0.25), "open": True, "uses": ["suite"],
             "hold_until": {"suite": "harvest"}, "operators": 2},
            {"name": "expansion", "duration": fixed(8 + 5 / 24), "uses": ["incubator"]},   # 8 d 5 h
            {"name": "harvest", "duration": fixed(0.25), "open": True, "operators": 2},
        ]}},
        "qc": {"tests": [
            {"name": "sterility", "duration": fixed(3.0), "hands_on_hours": 2, "sterility": True},
            {"name": "endotoxin", "duration": fixed(0.25), "hands_on_hours": 1},
        ]},
        "release": {"policy": "full", "qa_review_hours": 4, "qa_review_elapsed": fixed(1.0)},
        "gmp": {"line_clearance": fixed(1.5 / 24), "clearance_operators": 1, "starting_material": "fresh",
                "fresh_hold_limit_hours": 72},
    }


@pytest.fixture(scope="module")
def slot_run(tmp_path_factory: pytest.TempPathFactory) -> RunRecords:
    # P1 Mon 12:00, P2 Mon 13:12, P3 Fri 12:00
    csv = _referrals(tmp_path_factory.mktemp("trace"), [0.5, 0.55, 4.5])
    return simulate(build(slot_plant(csv)))


# Reserved suite days per start: ceil(0.25 + 8.2083 + 0.25 + clearance 0.0625 + 1 slack) = 10.
EXPECTED_SLOT = {
    "COI-000001-A1": {
        # Referred Mon 0.5. The first chair is tomorrow (day 1) and a start is lead = 1 day after its chair:
        # start Wed 2 (a plant day, 1 start free), chair Tue 1 (clinic open, free), 10 suite-days free.
        "slot_day": 2.0,
        "apheresis_start": 1.333333,     # Tue 08:00 (clinic opens)
        "apheresis_end": 1.583333,       # + 6 h = Tue 14:00
        "received": 2.583333,            # + 1 d transit = Wed 14:00
        "ready": 2.583333,               # slot day (Wed 00:00) already reached
        # activation needs 6 h of 2 operators: 14:00 + 6 h > 16:00, so it waits for Thu 08:00 (42 h fresh
        # hold <= 72 h limit)
        "mfg_start": 3.333333,
        # activation Thu 08:00-14:00; expansion 8 d 5 h -> Fri 11 19:00; harvest (6 h, 2 operators) waits
        # over the weekend to Mon 14 08:00 and ends Mon 14:00
        "mfg_end": 14.583333,
        # QC sampled Mon 14:00. endotoxin: 1 h set-up fits before 15:00 -> result 14:00 + 6 h = 20:00.
        # sterility: 2 h set-up would end 16:00 > 15:00 -> Tue 15 07:00; result 3 d after set-up start
        # = Fri 18 07:00
        "qc_complete": 18.291667,
        # QA: reviewer from 08:00 (4 h, ends 12:00); elapsed 1 d from Fri 07:00 -> Sat 19 07:00
        "released": 19.291667,
        "shipped": 19.291667,
        "delivered": 20.291667,          # Sun 20 07:00
        # lymphodepletion 3 d after release -> Tue 22 07:00; the clinic infuses at 08:00 -> Tue 22 08:00
        "infused": 22.333333,
    },
    "COI-000002-A1": {
        # Referred Mon 0.55: Wed 2's only start is taken by P1 -> start Thu 3, chair Wed 2 (free)
        "slot_day": 3.0,
        "apheresis_start": 2.333333,     # Wed 08:00
        "apheresis_end": 2.583333,       # Wed 14:00
        "received": 3.583333,            # Thu 14:00
        "ready": 3.583333,
        "mfg_start": 4.333333,           # activation does not fit Thu 14:00-20:00 -> Fri 08:00 (42 h hold)
        # activation Fri 08:00-14:00, expansion -> Sat 12 19:00. Harvest waits for Mon 14 08:00, but both
        # operators are on P1's harvest (P1 asked first) until 14:00; then 14:00 + 6 h > 16:00 -> Tue 15
        # 08:00-14:00
        "mfg_end": 15.583333,
        # endotoxin Tue 14:00 (fits); sterility set-up does not fit -> Wed 16 07:00, result Sat 19 07:00
        "qc_complete": 19.291667,
        # QA on Sat 07:00: reviewers are off until Mon 21 08:00, review to 12:00; the 1 d elapsed has
        # passed -> released Mon 21 12:00
        "released": 21.5,
        "delivered": 22.5,               # Tue 22 12:00
        # lymphodepletion -> Thu 24 12:00, past Thu's 08:00 infusion time -> Fri 25 08:00
        "infused": 25.333333,
    },
    "COI-000003-A1": {
        # Referred Fri 4.5: first chair Sat 5 -> first start Sun 6 (no plant day); Mon 7 is a plant day but
        # its chair day Sun 6 is closed; Tue 8 has a start and chair Mon 7 free (3 suites, 2 reserved)
        "slot_day": 8.0,
        "apheresis_start": 7.333333,     # Mon 08:00
        "apheresis_end": 7.583333,
        "received": 8.583333,            # Tue 14:00
        "ready": 8.583333,
        "mfg_start": 9.333333,           # Wed 08:00
        # expansion Wed 9 14:00 -> Thu 17 19:00; harvest Fri 18 08:00-14:00
        "mfg_end": 18.583333,
        # sterility set-up Fri 14:00 does not fit -> Mon 21 07:00, result Thu 24 07:00
        "qc_complete": 24.291667,
        "released": 25.291667,           # review Thu 08:00-12:00, elapsed 1 d -> Fri 25 07:00
        "delivered": 26.291667,
        "infused": 28.333333,            # LD -> Mon 28 07:00 -> clinic Mon 28 08:00
    },
}


def test_slot_mode_batch_timeline(slot_run: RunRecords) -> None:
    batches = {b.batch_no: b for b in slot_run.batches}
    assert sorted(batches) == sorted(EXPECTED_SLOT)
    for batch_no, expected in EXPECTED_SLOT.items():
        b = batches[batch_no]
        assert b.status == "infused"
        _approx(b._asdict(), expected)
    assert slot_run.deviations == []  # every hold within 72 h, every step within limits


def test_slot_mode_patients(slot_run: RunRecords) -> None:
    # slot_booked at referral (a slot was free inside the booking horizon); vein-to-vein 21, 23, 21 d
    exp = {"COI-000001": (0.5, 1.333333, 22.333333), "COI-000002": (0.55, 2.333333, 25.333333),
           "COI-000003": (4.5, 7.333333, 28.333333)}
    for p in slot_run.patients:
        booked, aph, infused = exp[p.coi]
        _approx(p._asdict(), {"slot_booked": booked, "first_apheresis": aph, "infused": infused})
        assert (p.status, p.attempts) == ("infused", 1)


def test_slot_mode_steps_and_suites(slot_run: RunRecords) -> None:
    steps = {(s.batch_no, s.step): s for s in slot_run.steps}
    want = {
        # (ready, start, end, resources held)
        ("COI-000001-A1", "activation"): (2.583333, 3.333333, 3.583333, "suite:S1"),
        ("COI-000001-A1", "expansion"): (3.583333, 3.583333, 11.791667, "suite:S1;incubator:I1"),
        ("COI-000001-A1", "harvest"): (11.791667, 14.333333, 14.583333, "suite:S1"),   # Fri 19:00 -> Mon 08:00
        ("COI-000002-A1", "activation"): (3.583333, 4.333333, 4.583333, "suite:S2"),
        ("COI-000002-A1", "expansion"): (4.583333, 4.583333, 12.791667, "suite:S2;incubator:I2"),
        ("COI-000002-A1", "harvest"): (12.791667, 15.333333, 15.583333, "suite:S2"),
        ("COI-000003-A1", "activation"): (8.583333, 9.333333, 9.583333, "suite:S3"),
        ("COI-000003-A1", "expansion"): (9.583333, 9.583333, 17.791667, "suite:S3;incubator:I3"),
        ("COI-000003-A1", "harvest"): (17.791667, 18.333333, 18.583333, "suite:S3"),
    }
    assert set(steps) == set(want)
    for key, (ready, start, end, res) in want.items():
        s = steps[key]
        _approx(s._asdict(), {"ready": ready, "start": start, "end": end})
        assert s.resources == res
    # suite hold from the first step's readiness to the harvest's end, then 1.5 h of clearance by one
    # operator (Mon 14:00-15:30 fits the shift)
    suite = sorted((u.unit, u.activity, round(u.start, 6), round(u.end, 6))
                   for u in slot_run.resource_uses if u.kind == "suite")
    assert suite == [
        ("S1", "activation", 2.583333, 14.583333), ("S1", "line_clearance", 14.583333, 14.645833),
        ("S2", "activation", 3.583333, 15.583333), ("S2", "line_clearance", 15.583333, 15.645833),
        ("S3", "activation", 8.583333, 18.583333), ("S3", "line_clearance", 18.583333, 18.645833),
    ]


def test_slot_mode_qc_waits_for_analyst_shift(slot_run: RunRecords) -> None:
    got = {(q.batch_no, q.test): (q.sampled, q.start, q.result_time) for q in slot_run.qc_results}
    want = {
        ("COI-000001-A1", "endotoxin"): (14.583333, 14.583333, 14.833333),   # 1 h fits before 15:00
        ("COI-000001-A1", "sterility"): (14.583333, 15.291667, 18.291667),   # 2 h does not -> Tue 07:00
        ("COI-000002-A1", "endotoxin"): (15.583333, 15.583333, 15.833333),
        ("COI-000002-A1", "sterility"): (15.583333, 16.291667, 19.291667),   # -> Wed 07:00
        ("COI-000003-A1", "endotoxin"): (18.583333, 18.583333, 18.833333),
        ("COI-000003-A1", "sterility"): (18.583333, 21.291667, 24.291667),   # Fri -> Mon 07:00
    }
    assert set(got) == set(want)
    for key, triple in want.items():
        for g, w in zip(got[key], triple, strict=True):
            assert abs(g - w) < TOL, (key, got[key], triple)
    reviews = sorted((u.batch_no, round(u.start, 6), round(u.end, 6))
                     for u in slot_run.resource_uses if u.kind == "qa_reviewers")
    assert reviews == [("COI-000001-A1", 18.333333, 18.5),     # Fri 08:00-12:00
                       ("COI-000002-A1", 21.333333, 21.5),     # Sat result -> Mon 08:00-12:00
                       ("COI-000003-A1", 24.333333, 24.5)]     # Thu 08:00-12:00


def test_batch_record_names_its_suite(slot_run: RunRecords) -> None:
    suites = {b.batch_no: b.suite for b in slot_run.batches}
    assert suites == {"COI-000001-A1": "S1", "COI-000002-A1": "S2", "COI-000003-A1": "S3"}


# ------------------------------------------------------------ collect on referral, queue at the plant
def queue_plant(csv: str) -> dict:
    return {
        "name": "trace_queue",
        "horizon_days": 40,
        "warmup_days": 0,
        "seed": 1,
        "demand": {"referrals_csv": csv},
        "sites": [{
            "name": "clinic_24h", "apheresis_per_day": 5, "apheresis_duration": fixed(0.25),
            "inbound_transit": fixed(0.5), "outbound_transit": fixed(1.0), "infusion_slots_per_day": 5,
            "lymphodepletion": fixed(3.0), "calendar": "always",
        }],
        "booking": {"mode": "collect_then_queue", "start_calendar": "always", "max_attempts": 1},
        "calendars": {"always": ALWAYS,
                      "day_shift": {"shifts": [{"start_hour": 8, "hours": 8}], "days": WEEKDAYS}},
        "resources": {
            "suites": 1, "incubators": 1,
            "operators": {"count": 1, "calendar": "day_shift"},
            "qc_analysts": {"count": 5, "calendar": "always"},
            "qa_reviewers": {"count": 5, "calendar": "always"},
        },
        "products": {"cart": {"steps": [
            {"name": "activation", "duration": fixed(0.25), "open": True, "uses": ["suite"],
             "hold_until": {"suite": "harvest"}, "operators": 1},
            {"name": "expansion", "duration": fixed(1.0), "uses": ["incubator"]},
            {"name": "harvest", "duration": fixed(0.25), "open": True, "operators": 1},
        ]}},
        "qc": {"tests": [{"name": "endotoxin", "duration": fixed(0.25), "hands_on_hours": 1}]},
        "release": {"policy": "full", "qa_review_hours": 1, "qa_review_elapsed": fixed(0.5)},
        "gmp": {"line_clearance": fixed(1.5 / 24), "clearance_operators": 1, "starting_material": "cryopreserved"},
    }


def test_collect_then_queue_timeline(tmp_path: Path) -> None:
    # referrals Mon 00:00, 02:24, 04:48; the 24/7 site collects on referral (6 h), 12 h transit
    rec = simulate(build(queue_plant(_referrals(tmp_path, [0.0, 0.1, 0.2]))))
    b = {x.batch_no: x for x in rec.batches}
    expected = {
        # P1: collected 0.0-0.25, received 0.75 (Mon 18:00) and takes the only suite at once. Activation
        # (6 h, 1 operator) waits for Tue 08:00; expansion 1 d to Wed 14:00; harvest 14:00 + 6 h > 16:00
        # -> Thu 3 08:00-14:00; clearance Thu 14:00-15:30.
        "COI-000001-A1": {"apheresis_start": 0.0, "apheresis_end": 0.25, "received": 0.75, "ready": 0.75,
                          "mfg_start": 1.333333, "mfg_end": 3.583333},
        # P2: received 0.85, queues (FIFO by referral) until P1's clearance ends Thu 15:30; activation does
        # not fit -> Fri 08:00; expansion to Sat 14:00; harvest Mon 7 08:00-14:00; clearance to 15:30
        "COI-000002-A1": {"apheresis_start": 0.1, "apheresis_end": 0.35, "received": 0.85, "ready": 0.85,
                          "mfg_start": 4.333333, "mfg_end": 7.583333},
        # P3: received 0.95, suite free Mon 7 15:30; activation Tue 8 08:00; expansion to Wed 14:00;
        # harvest Thu 10 08:00-14:00
        "COI-000003-A1": {"apheresis_start": 0.2, "apheresis_end": 0.45, "received": 0.95, "ready": 0.95,
                          "mfg_start": 8.333333, "mfg_end": 10.583333},
    }
    for batch_no, exp in expected.items():
        _approx(b[batch_no]._asdict(), exp)
        assert b[batch_no].slot_day is None
    suite = sorted((round(u.start, 6), round(u.end, 6), u.batch_no, u.activity)
                   for u in rec.resource_uses if u.kind == "suite")
    assert suite == [
        (0.75, 3.583333, "COI-000001-A1", "activation"), (3.583333, 3.645833, "COI-000001-A1", "line_clearance"),
        (3.645833, 7.583333, "COI-000002-A1", "activation"), (7.583333, 7.645833, "COI-000002-A1", "line_clearance"),
        (7.645833, 10.583333, "COI-000003-A1", "activation"), (10.583333, 10.645833, "COI-000003-A1", "line_clearance"),
    ]
    # wait for the suite (mfg_start - ready) includes the wait for the operators' shift: 0.583, 3.483, 7.383 d
    waits = [round(b[k].mfg_start - b[k].ready, 6) for k in sorted(expected)]
    assert waits == [0.583333, 3.483333, 7.383333]
