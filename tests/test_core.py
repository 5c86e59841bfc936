"""Tests for core: limiter windows, retry policy, deep links, record round trip."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from core import runtime
from core.clock import FakeClock
from core.domain import ApprovalStep, Binding, FinanceRecord, RecordKind
from core.links import page_link
from core.ratelimit import MultiLimiter, WindowLimiter
from core.retry import RetryPolicy
from store.records import load_record


def test_window_limiter_enforces_every_window():
    clock = FakeClock()
    lim = WindowLimiter([(7, 1.0), (8, 2.0)], clock.monotonic)
    admitted = [lim.try_acquire() == 0.0 for _ in range(9)]
    assert admitted == [True] * 7 + [False, False]
    clock.advance(1.0)
    assert lim.try_acquire() == 0.0  # 8th within 2 s
    wait = lim.try_acquire()  # 9th would break 8 per 2 s
    assert wait == pytest.approx(1.0)
    clock.advance(wait)
    assert lim.try_acquire() == 0.0


def test_window_limiter_penalty_blocks_until_retry_after():
    clock = FakeClock()
    lim = WindowLimiter([(50, 1.0)], clock.monotonic)
    lim.penalise(3.0)
    assert lim.try_acquire() == pytest.approx(3.0)
    clock.advance(3.0)
    assert lim.try_acquire() == 0.0


def test_multi_limiter_consumes_only_when_all_admit():
    clock = FakeClock()
    channel = WindowLimiter([(1, 1.0)], clock.monotonic)
    app = WindowLimiter([(10, 1.0)], clock.monotonic)
    both = MultiLimiter(channel, app)
    assert both.try_acquire() == 0.0
    assert both.try_acquire() > 0
    assert app.wait_time() == 0.0 and len(app._times) == 1


def test_retry_policy_full_jitter_and_retry_after():
    policy = RetryPolicy(base=1.0, cap=8.0, max_attempts=4, max_elapsed=100)
    rng = random.Random(1)
    delays = [policy.delay(a, rng=rng) for a in range(1, 8)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert policy.delay(3, retry_after=2.5) == 2.5
    assert policy.gives_up(4, 0) and not policy.gives_up(3, 0)
    assert policy.gives_up(1, 99, next_delay=2)


def test_page_link_quotes_strings_and_leaves_numbers_bare():
    url = page_link("https://ifs.example.com/", "ManualSupplierInvoice/Form", [("Company", "10"), ("InvoiceId", 105)])
    assert url == ("https://ifs.example.com/main/ifsapplications/web/page/ManualSupplierInvoice/Form;"
                   "$filter=Company%20eq%20'10'%20and%20InvoiceId%20eq%20105")
    assert "O''Brien" in page_link("h", "P/Form", [("OrderNo", "O'Brien")])


def test_record_round_trips_through_its_stored_form():
    rec = FinanceRecord(kind=RecordKind.INVOICE, company="10", key="Company=10^InvoiceId=105", number="105",
                        state="Preliminary", amount=Decimal("1234.50"), currency="EUR", doc_date=date(2026, 11, 1),
                        approvers=(ApprovalStep(1, "ALAIN", "Unacknowledged", "Authorizer"),),
                        details=(("Supplier invoice no", "INV-9"),))
    assert load_record(orjson.dumps(rec.to_dict())) == rec
    assert rec.detail("Supplier invoice no") == "INV-9"


def test_the_compact_stored_form_is_the_same_record():
    """Bulk pages are stored as arrays in FinanceRecord.COMPACT order (None where absent, details flat)."""
    compact = ["invoice", "10", "Company=10^InvoiceId=105", "105", "Preliminary", "W/\"1\"", "V1", None, "1234.50",
               None, "EUR", "2026-11-01", None, None, None, None, ["Supplier invoice no", "INV-9", "PO ref", "77"]]
    rec = load_record(orjson.dumps(compact))
    assert rec == FinanceRecord(kind=RecordKind.INVOICE, company="10", key="Company=10^InvoiceId=105",
                                number="105", state="Preliminary", etag='W/"1"', party_id="V1",
                                amount=Decimal("1234.50"), currency="EUR", doc_date=date(2026, 11, 1),
                                details=(("Supplier invoice no", "INV-9"), ("PO ref", "77")))
    assert FinanceRecord.from_dict(rec.to_dict()) == rec == FinanceRecord.from_dict(tuple(compact))
    assert load_record(orjson.dumps(compact[:6])).party_id is None  # trailing fields may be left off


def test_binding_filters_by_kind_cost_centre_and_amount():
    rec = FinanceRecord(kind=RecordKind.ORDER, company="10", key="OrderNo=P1", number="P1", state="Planned",
                        amount=Decimal("500"), cost_center="CC1")
    assert Binding("c", "10").matches(rec)
    assert not Binding("c", "20").matches(rec)
    assert not Binding("c", "10", kinds=frozenset({RecordKind.INVOICE})).matches(rec)
    assert not Binding("c", "10", cost_centers=frozenset({"CC2"})).matches(rec)
    assert not Binding("c", "10", min_amount=Decimal("1000")).matches(rec)
    assert RecordKind.parse("Invoices") is RecordKind.INVOICE


def test_settings_from_toml_env_and_defaults(tmp_path):
    from core.settings import load_settings
    cfg = tmp_path / "n.toml"
    cfg.write_text('[service]\nport = 4000\ntimezone = "Europe/Stockholm"\n[bot]\nadmins = ["a@x.com"]\n')
    s = load_settings(cfg, env={"NOTIFIER__IFS__PAGE_SIZE": "200", "NOTIFIER__SERVICE__DEV_MODE": "true"})
    assert (s.service.port, s.ifs.page_size, s.service.dev_mode, s.bot.admins) == (4000, 200, True, ("a@x.com",))
    assert s.delivery.digest_threshold == 10


def test_every_source_setting_can_come_from_the_environment(tmp_path):
    from core.settings import load_settings
    from pollers.sources import build_sources
    cfg = tmp_path / "n.toml"
    cfg.write_text('[sources.invoice]\nprojection = "SupplierInvoiceHandling"\n')
    s = load_settings(cfg, env={
        "NOTIFIER__SOURCES__INVOICE__ENTITY_SET": "SupplierInvoices",
        "NOTIFIER__SOURCES__INVOICE__KEYS": '[["Company", "str"], ["InvoiceId", "int"]]',
        "NOTIFIER__SOURCES__INVOICE__COST_CENTER": "false",
        "NOTIFIER__SOURCES__INVOICE__APPROVALS__NAVIGATION": "AuthLines",
        "NOTIFIER__SOURCES__VOUCHER__ENABLED": "false"})
    spec = build_sources(s.sources)
    inv = spec[RecordKind.INVOICE]
    assert (inv.projection, inv.entity_set, inv.keys, inv.cost_center) == (
        "SupplierInvoiceHandling", "SupplierInvoices", (("Company", "str"), ("InvoiceId", "int")), None)
    assert inv.approvals.navigation == "AuthLines" and inv.approvals.sequence == "LineNo"
    assert spec[RecordKind.VOUCHER].enabled is False


def test_an_empty_config_path_means_no_file():
    from core.settings import load_settings
    assert load_settings("", env={}).path is None


@pytest.mark.parametrize("text,env,key", [
    ('[service]\nport = "x"\n', {}, "service.port"),
    ('[service]\nprot = 1\n', {}, "service.prot"),
    ('[servce]\n', {}, "servce"),
    ('[service]\ntimezone = "Mars/Base"\n', {}, "service.timezone"),
    ('[service]\nhost = "0.0.0.0"\ndev_mode = true\n', {}, "service.dev_mode"),
    ('', {"NOTIFIER__IFS__PAGE_SIZE": "0"}, "ifs.page_size"),
    ('[delivery]\nquiet_hours = "25:00-07:00"\n', {}, "delivery.quiet_hours"),
    ('not toml [', {}, "--config"),
    ('', {"NOTIFIER__SOURCES__INVOICE__DETAILS": "[not json"}, "NOTIFIER__SOURCES__INVOICE__DETAILS"),
    ('', {"NOTIFIER__SOURCES": "x"}, "NOTIFIER__SOURCES"),
])
def test_invalid_config_names_the_key(tmp_path, text, env, key):
    from core.errors import ConfigError
    from core.settings import load_settings
    cfg = tmp_path / "n.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env=env)
    assert err.value.key == key


def test_runtime_settle_freezes_startup_objects_and_tunes_collection_and_switching():
    # in a child interpreter: these settings are process-wide
    code = ("import gc, sys; from core import runtime; runtime.settle(); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000, sys.getswitchinterval())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == [str(runtime.YOUNG_GENERATION_THRESHOLD), "True",
                                  str(runtime.SWITCH_INTERVAL_SECONDS)]


def test_the_record_key_codec_round_trips_and_templates_encode_alike():
    from core.domain import decode_key, encode_key, key_template

    values = {"Company": "10", "AccountingYear": 2026, "VoucherType": "M", "VoucherNo": 1001}
    key = encode_key(values)
    assert key == "Company=10^AccountingYear=2026^VoucherType=M^VoucherNo=1001"
    assert decode_key(key) == {k: str(v) for k, v in values.items()}
    assert key_template(list(values)).format(*values.values()) == key
    assert decode_key(encode_key({"OrderNo": "P=1"})) == {"OrderNo": "P=1"}  # '=' in a value survives
