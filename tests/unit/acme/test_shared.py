"""ACME in a cluster (kartero/acme/shared.py over store/acme_sql.py, here on the SQLite backend, which
speaks the same SQL): one account, one certificate for every node, one node ordering at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.acme.challenges import Challenges
from kartero.acme.shared import RowTokens, SharedAcme
from kartero.acme.storage import AcmeFiles, State
from kartero.store.acme_sql import SqlAcmeRows
from kartero.store.sqlite import SQLiteStore
from kartero.tls import make_self_signed

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


@pytest.fixture
def rows(tmp_path: Path) -> Iterator[SqlAcmeRows]:
    store = SQLiteStore(tmp_path / "db")
    store.start()
    yield SqlAcmeRows(store.database)
    store.close()


def test_issue_15_one_node_leads_until_its_lease_runs_out(rows: SqlAcmeRows) -> None:
    assert rows.try_lead("a", 1000.0, 300.0)
    assert not rows.try_lead("b", 1100.0, 300.0)
    assert rows.try_lead("a", 1200.0, 300.0)  # the leader renews its lease (now until 1500)
    assert not rows.try_lead("b", 1450.0, 300.0)
    assert rows.try_lead("b", 1501.0, 300.0)  # a silent leader is taken over
    assert not rows.try_lead("a", 1502.0, 300.0)


def test_issue_15_the_cluster_shares_one_account_and_one_certificate(rows: SqlAcmeRows, tmp_path: Path) -> None:
    a = SharedAcme(rows, AcmeFiles(tmp_path / "a"), "a")
    b = SharedAcme(rows, AcmeFiles(tmp_path / "b"), "b")
    assert a.account_key().private_numbers() == b.account_key().private_numbers()
    a.save_account("https://ca.example/dir", "https://ca.example/acct/7")
    assert b.account_uri("https://ca.example/dir") == "https://ca.example/acct/7"
    assert not b.sync() and b.certificate() is None
    make_self_signed(tmp_path / "c.pem", tmp_path / "c.key", ["mail.example.test"], days=90)
    a.save_certificate((tmp_path / "c.pem").read_bytes(), (tmp_path / "c.key").read_bytes())
    assert b.sync()  # copied into b's data_dir/acme/, where its listeners load it
    assert b.certificate() == a.certificate() is not None
    assert b.cert.read_bytes() == (tmp_path / "c.pem").read_bytes()
    assert b.key.stat().st_mode & 0o777 == 0o600
    assert not b.sync()  # nothing new
    a.save_state(State(2, 50.0, "refused", 0.0, "http-01"))
    assert b.state() == State(2, 50.0, "refused", 0.0, "http-01")  # the backoff is the cluster's


def test_issue_15_an_http01_answer_put_up_by_one_node_is_served_by_another(rows: SqlAcmeRows) -> None:
    ordering, answering = Challenges(RowTokens(rows)), Challenges(RowTokens(rows))
    ordering.add_http01(TOKEN, f"{TOKEN}.thumbprint")
    assert answering.http01(TOKEN) == f"{TOKEN}.thumbprint"
    assert answering.http01("../" + TOKEN) is None
    ordering.clear()
    assert answering.http01(TOKEN) is None
