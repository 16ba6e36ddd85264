"""Issue 13: the learner that sends users' spam/ham reports to rspamd's controller ([spam] learn),
against a tiny HTTP server on loopback that answers as the test says: the request rspamd gets, retries
with a doubling backoff on connection errors and 5xx, "already learned" and 4xx as final, the bound of
the queue, and one failing message never holding back the others."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kartero.filters.learn import Learner, LearnSettings
from kartero.store.interface import SpamClass, SpamReport, StoreError

USER = "bob@example.test"
BROKEN = b"x" * 200_000  # its reader fails past 100,000 octets
MESSAGES = {f"blob{i}": f"Subject: message {i}\r\n\r\nbody {i}\r\n".encode() * (1 + i * 10000) for i in range(6)}


class FakeReader:
    def __init__(self, data: bytes, gone_after: int | None = None) -> None:
        self.data = data
        self.closed = False
        self.gone_after = gone_after  # reads past this offset fail, as for a message compacted away
        READS.append(self)
        self.lengths: list[int] = []

    def read(self, start: int, length: int) -> bytes:
        if self.gone_after is not None and start >= self.gone_after:
            raise StoreError("message broken is gone")
        self.lengths.append(length)
        return self.data[start : start + length]

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """The one call the learner makes: open_message."""

    def open_message(self, blob_id: str) -> FakeReader:
        if blob_id == "broken":
            return FakeReader(BROKEN, gone_after=100_000)
        if blob_id not in MESSAGES:
            raise StoreError(f"no message {blob_id}")
        return FakeReader(MESSAGES[blob_id])


READS: list[FakeReader] = []


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Request], tuple[int, bytes]]


class Controller:
    """An HTTP server on 127.0.0.1 standing in for rspamd's controller; `answer` picks each reply."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: queue.Queue[Request] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = Request(self.path, dict(self.headers.items()), body)
                outer.requests.put(request)  # before the answer: the learner is done once it has that
                status, text = outer.answer(request)
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def all(self) -> list[Request]:
        out = []
        while not self.requests.empty():
            out.append(self.requests.get_nowait())
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def controller() -> Iterator[Callable[[Answer], Controller]]:
    made: list[Controller] = []

    def make(answer: Answer) -> Controller:
        made.append(Controller(answer))
        return made[-1]

    yield make
    for c in made:
        c.close()


def learner_for(port: int, **settings: object) -> Learner:
    values: dict[str, object] = {"first_backoff_s": 0.01, "max_backoff_s": 0.04, "max_attempts": 4, "timeout_s": 5.0}
    values.update(settings)
    return Learner(FakeStore(), LearnSettings(f"http://127.0.0.1:{port}", **values))  # type: ignore[arg-type]


def report(blob: str, kind: SpamClass = SpamClass.SPAM) -> SpamReport:
    return SpamReport(USER, blob, len(MESSAGES.get(blob, b"gone")), kind)


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kartero.spam"]


def test_issue_13_spam_and_ham_go_to_their_paths_with_the_message(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")
    server = controller(lambda r: (200, b'{"success":true}'))
    learner = learner_for(server.port)
    learner.start()
    learner.report([report("blob5"), report("blob1", SpamClass.HAM)])
    assert learner.wait_idle(10)
    learner.stop()
    first, second = server.all()
    assert (first.path, first.body, first.headers["Deliver-To"]) == ("/learnspam", MESSAGES["blob5"], USER)
    assert len(first.body) > 64 * 1024 * 5  # sent in blocks, all of it
    assert (second.path, second.body) == ("/learnham", MESSAGES["blob1"])
    assert "Password" not in first.headers
    assert events(caplog) == [
        "event=spam.learned user=bob@example.test message=blob5 kind=spam status=200 attempts=1",
        "event=spam.learned user=bob@example.test message=blob1 kind=ham status=200 attempts=1",
    ]


def test_issue_13_the_message_is_read_in_64_kib_pieces_and_closed(controller: Callable[[Answer], Controller]) -> None:
    server = controller(lambda r: (200, b"{}"))
    learner = learner_for(server.port)
    learner.start()
    READS.clear()
    learner.report([report("blob5")])
    assert learner.wait_idle(10)
    learner.stop()
    (reader,) = READS
    size = len(MESSAGES["blob5"])
    assert reader.closed and sum(reader.lengths) == size
    assert len(reader.lengths) == -(-size // 65536) and max(reader.lengths) == 65536


def test_issue_13_a_message_gone_while_it_is_sent_fails_without_retries(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")
    server = controller(lambda r: (200, b"{}"))
    learner = learner_for(server.port)
    learner.start()
    learner.report([SpamReport(USER, "broken", len(BROKEN), SpamClass.SPAM), report("blob0")])
    assert learner.wait_idle(10)
    learner.stop()
    lines = events(caplog)
    assert lines[0] == ("event=spam.learn_failed user=bob@example.test message=broken kind=spam attempts=1"
                        ' detail="message not readable: message broken is gone"')  # fmt: skip
    assert lines[1].startswith("event=spam.learned user=bob@example.test message=blob0 ")
    # the server records a request when it has read it: the cut one may come last
    requests = server.all()
    learned = [r for r in requests if r.body == MESSAGES["blob0"]]
    broken = [r for r in requests if r.body != MESSAGES["blob0"]]
    assert len(learned) == 1 and len(broken) == 1 and len(broken[0].body) < len(BROKEN)  # the broken one never whole


def test_issue_13_url_path_and_password(controller: Callable[[Answer], Controller]) -> None:
    """A controller behind a path prefix, with rspamd's `Password` header from the URL's userinfo."""
    server = controller(lambda r: (200, b"{}"))
    learner = Learner(FakeStore(), LearnSettings(f"http://:s%40cret@127.0.0.1:{server.port}/rspamd/"))
    learner.start()
    learner.report([report("blob0")])
    assert learner.wait_idle(10)
    learner.stop()
    (request,) = server.all()
    assert (request.path, request.headers["Password"]) == ("/rspamd/learnspam", "s@cret")


def test_issue_13_5xx_is_retried_with_a_doubling_backoff(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")
    answers = iter([(503, b"busy"), (500, b"oops"), (200, b"{}")])
    server = controller(lambda r: next(answers))
    learner = learner_for(server.port)
    learner.start()
    learner.report([report("blob0")])
    assert learner.wait_idle(10)
    learner.stop()
    assert len(server.all()) == 3
    assert events(caplog) == [
        "event=spam.learn_retry user=bob@example.test message=blob0 kind=spam status=503 attempts=1 retry_in_s=0.01"
        " detail=busy",
        "event=spam.learn_retry user=bob@example.test message=blob0 kind=spam status=500 attempts=2 retry_in_s=0.02"
        " detail=oops",
        "event=spam.learned user=bob@example.test message=blob0 kind=spam status=200 attempts=3",
    ]


def test_issue_13_connection_errors_are_retried_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")
    server = Controller(lambda r: (200, b"{}"))
    port = server.port
    server.close()  # nothing listens there now: connection refused
    learner = learner_for(port)
    learner.start()
    learner.report([report("blob0")])
    assert learner.wait_idle(10)
    learner.stop()
    lines = events(caplog)
    assert [line.split()[0] for line in lines] == ["event=spam.learn_retry"] * 3 + ["event=spam.learn_failed"]
    assert [line.split("retry_in_s=")[1].split()[0] for line in lines[:3]] == ["0.01", "0.02", "0.04"]
    assert lines[-1].startswith("event=spam.learn_failed user=bob@example.test message=blob0 kind=spam attempts=4"
                                " detail=\"ConnectionRefusedError:")  # fmt: skip


def test_issue_13_already_learned_is_done_and_4xx_is_final(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")

    def answer(r: Request) -> tuple[int, bytes]:
        if r.body == MESSAGES["blob0"]:
            return 208, b'{"error":"<x@example.org> has been already learned as spam, ignore it"}'
        return 400, b'{"error":"cannot parse message"}'

    server = controller(answer)
    learner = learner_for(server.port)
    learner.start()
    learner.report([report("blob0"), report("blob1"), report("gone")])
    assert learner.wait_idle(10)
    learner.stop()
    assert len(server.all()) == 2  # one request each: neither is tried again; "gone" is not sent at all
    assert events(caplog) == [
        "event=spam.learned user=bob@example.test message=blob0 kind=spam status=208 attempts=1"
        " detail=\"already learned\"",
        "event=spam.learn_failed user=bob@example.test message=blob1 kind=spam status=400 attempts=1"
        " detail=\"{\\\"error\\\":\\\"cannot parse message\\\"}\"",
        "event=spam.learn_failed user=bob@example.test message=gone kind=spam attempts=1"
        " detail=\"message not readable: no message gone\"",
    ]


def test_issue_13_a_failing_message_does_not_hold_back_the_others(controller: Callable[[Answer], Controller]) -> None:
    """blob0 gets 503 until its attempts run out; blob1 and blob2, reported after it, are learned meanwhile."""
    server = controller(lambda r: (503, b"no") if r.body == MESSAGES["blob0"] else (200, b"{}"))
    learner = learner_for(server.port, first_backoff_s=0.5, max_backoff_s=0.5, max_attempts=3)
    learner.start()
    learner.report([report("blob0"), report("blob1"), report("blob2")])
    assert learner.wait_idle(10)
    learner.stop()
    order = [MESSAGES_BY_BODY[r.body] for r in server.all()]
    assert order == ["blob0", "blob1", "blob2", "blob0", "blob0"]


MESSAGES_BY_BODY = {body: blob for blob, body in MESSAGES.items()}


def test_issue_13_a_full_queue_drops_the_oldest(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kartero.spam")
    server = controller(lambda r: (200, b"{}"))
    learner = learner_for(server.port, max_queue=3)
    learner.report([report(f"blob{i}") for i in range(5)])  # before the worker runs: the queue fills
    learner.start()
    assert learner.wait_idle(10)
    learner.stop()
    assert [MESSAGES_BY_BODY[r.body] for r in server.all()] == ["blob2", "blob3", "blob4"]
    assert events(caplog)[0] == "event=spam.learn_dropped reason=\"queue full\" count=2 max_queue=3"


def test_issue_13_a_full_queue_drops_waiting_retries_first(
    controller: Callable[[Answer], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    """Reports waiting to be tried again are older than any new one: they are the first to go."""
    caplog.set_level(logging.INFO, "kartero.spam")
    failing = threading.Event()
    failing.set()
    server = controller(lambda r: (503, b"busy") if failing.is_set() else (200, b"{}"))
    learner = learner_for(server.port, max_queue=3, first_backoff_s=30.0, max_backoff_s=30.0)
    learner.start()
    learner.report([report("blob0"), report("blob1")])
    deadline = time.monotonic() + 10
    while sum("spam.learn_retry" in line for line in events(caplog)) < 2:  # both wait 30 s for their retry
        assert time.monotonic() < deadline
        time.sleep(0.01)
    failing.clear()
    learner.report([report("blob2"), report("blob3"), report("blob4")])
    assert learner.wait_idle(10)  # without the two retries, nothing is left to wait 30 s for
    learner.stop()
    assert [MESSAGES_BY_BODY[r.body] for r in server.all()] == ["blob0", "blob1", "blob2", "blob3", "blob4"]
    assert "event=spam.learn_dropped reason=\"queue full\" count=2 max_queue=3" in events(caplog)


def test_issue_13_stop_drops_what_is_queued_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    learner = learner_for(1)  # never started: nothing is sent
    learner.report([report("blob0"), report("blob1")])
    learner.stop()
    assert events(caplog) == ["event=spam.learn_dropped reason=shutdown count=2"]


def test_issue_13_report_returns_at_once_while_the_controller_hangs(controller: Callable[[Answer], Controller]) -> None:
    """The IMAP command's side: `report` only queues, whatever the controller does."""
    release = threading.Event()

    def hang(r: Request) -> tuple[int, bytes]:
        release.wait(10)
        return 200, b"{}"

    server = controller(hang)
    learner = learner_for(server.port)
    learner.start()
    learner.report([report("blob0")])
    done = threading.Event()
    threading.Thread(target=lambda: (learner.report([report("blob1")]), done.set()), daemon=True).start()
    assert done.wait(2)  # returned while the first request hangs
    assert not learner.wait_idle(0.05)
    release.set()
    assert learner.wait_idle(10)
    learner.stop()
    assert len(server.all()) == 2


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "http://", "127.0.0.1:11334"])
def test_issue_13_settings_refuse_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        LearnSettings(url)
