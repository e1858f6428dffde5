"""The request path's records (``keyplane.values.Value``): what a NamedTuple gave them for free
(fields in order, equality, a readable repr, a changed copy) still holds, and their rows reach the
database column for column."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from keyplane.billing.wallet import Hold
from keyplane.keys.format import KeyKind, ParsedKey, generate
from keyplane.storage.settlement_writer import HOLD_COLUMNS, _usage_tuple, hold_row
from keyplane.usage.records import Outcome, UsageRecord

SRC = Path(__file__).resolve().parents[2] / "src" / "keyplane"


def _value_classes() -> list[tuple[str, ast.ClassDef]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Value" for b in node.bases
            ):
                found.append((f"{path.relative_to(SRC)}:{node.name}", node))
    return found


VALUES = _value_classes()


def test_the_request_path_records_are_values() -> None:
    names = {name.split(":")[1] for name, _ in VALUES}
    assert {"UsageRecord", "Hold", "Settlement", "Outcome", "Decision", "CostBound"} <= names


@pytest.mark.parametrize(("where", "cls"), VALUES, ids=[name for name, _ in VALUES])
def test_fields_are_the_init_parameters_in_order(where: str, cls: ast.ClassDef) -> None:
    fields = init = None
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FIELDS" for t in stmt.targets
        ):
            fields = tuple(ast.literal_eval(stmt.value))
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
            init = tuple(a.arg for a in stmt.args.args[1:])
            assigned = [
                s.targets[0].attr
                for s in stmt.body
                if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Attribute)
            ]
    assert fields is not None and init is not None, where
    assert fields == init, where
    assert assigned == list(fields), where  # each set once, from its parameter


def _record(**changes: object) -> UsageRecord:
    fields: dict[str, object] = dict(
        request_id="req_1", created_at=1_700_000_000, org_id="org_1", project_id="proj_1",
        key_id="key_1", owner_type="user", owner_id="user_1", model="gpt-4o",
        endpoint="chat.completions", input_tokens=10, cached_input_tokens=2, output_tokens=5,
        status=200, latency_ms=3, client_ip="10.0.0.1", cost_micro_usd=75, stream=True,
        outcome=Outcome.COMPLETED, tokens_estimated=False, period="2026-12", images=2,
        audio_seconds=3, characters=4,  # (distinct: a row with two of them swapped differs)
    )  # fmt: skip
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def test_equality_hash_repr_and_replace() -> None:
    a, b = _record(), _record()
    assert a == b and hash(a) == hash(b) and a != _record(status=500)
    assert a != a.astuple()  # a record equals records only, not a tuple of its fields
    assert repr(a).startswith("UsageRecord(request_id='req_1', created_at=1700000000,")
    changed = a.replace(cost_micro_usd=60, period="2027-01")
    assert (changed.cost_micro_usd, changed.period, a.cost_micro_usd) == (60, "2027-01", 75)
    assert changed.replace(cost_micro_usd=75, period="2026-12") == a
    assert a.asdict()["client_ip"] == "10.0.0.1" and list(a.asdict()) == list(UsageRecord.FIELDS)


@pytest.mark.parametrize("sqlite", [True, False], ids=["sqlite", "postgresql"])
def test_a_usage_row_is_the_record_field_for_field(sqlite: bool) -> None:
    record = _record(outcome=Outcome.CLIENT_DISCONNECTED, stream=True, tokens_estimated=False)
    row = _usage_tuple(record, sqlite)
    assert row == tuple(
        "client_disconnected" if name == "outcome" else getattr(record, name)
        for name in UsageRecord.FIELDS
    )
    assert type(row[UsageRecord.FIELDS.index("outcome")]) is str  # the value, not the member
    flags = {type(row[UsageRecord.FIELDS.index(n)]) for n in ("stream", "tokens_estimated")}
    assert flags == ({int} if sqlite else {bool})  # (True == 1: the types tell them apart)


def test_a_hold_row_is_the_hold_field_for_field_then_open() -> None:
    hold = Hold("req_1", "org_1", "proj_1", 1_234, "2026-12", 100, 160, "key_1", "gpt-4o", "emb")
    assert hold_row(hold) == (*hold.astuple(), "open")
    assert len(HOLD_COLUMNS) == len(Hold.FIELDS) + 1 and HOLD_COLUMNS[-1] == "status"


def test_a_parsed_key_never_shows_its_secret() -> None:
    full, parsed = generate(KeyKind.PROJECT)
    assert parsed.secret in full
    assert parsed.secret not in repr(parsed) and parsed.public_id in repr(parsed)
    assert parsed == ParsedKey(KeyKind.PROJECT, parsed.public_id, parsed.secret)


def test_units_say_what_was_billed_besides_tokens() -> None:
    from keyplane.usage.records import units

    assert units(0, 0, 0) == ""
    assert units(1, 0, 0) == "1 image"
    assert units(3, 65, 0) == "3 images · 1 min 5 s of audio"
    assert units(0, 59, 1) == "59 s of audio · 1 character"
    assert units(0, 0, 12_345) == "12,345 characters"
