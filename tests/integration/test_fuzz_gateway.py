"""A long fuzz of the gateway over real sockets (BRIEF C12: bad input of any kind gets a clear 4xx
in OpenAI's envelope, never a 500; every request that reached the upstream is metered exactly
once). Opt-in, out of CI: ``KEYPLANE_FUZZ=<examples per test> pytest
tests/integration/test_fuzz_gateway.py`` (``KEYPLANE_FUZZ=2000`` runs some minutes; add
``KEYPLANE_FUZZ_DB=postgresql`` to run on a fresh PostgreSQL database). Random, not derandomized:
each run tries new inputs, and hypothesis prints the one that failed.

Every request goes to keyplane's own HTTP server, in front of the simulator, which notes each
request that reaches it by the ``x-fuzz-id`` header the client sent (keyplane forwards it). At the
end (the module's last test), the usage records are compared with those requests: exactly one record for each
request that reached the upstream, and none for one that did not; the ledger sums to zero and the
spend it shows is the records' cost. (Each test can also run alone: ``-k headers``.) Long runs
need ``--timeout=0``: pytest's limit is 300 s a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from conftest import Keyplane, fresh_postgres, start_keyplane
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage.billing_tables import ledger_entries
from kptest import ServerThread

EXAMPLES = int(os.environ.get("KEYPLANE_FUZZ", "0"))
pytestmark = pytest.mark.skipif(not EXAMPLES, reason="opt-in: KEYPLANE_FUZZ=<examples>")
CREDIT = 10**12  # a million dollars: the fuzz never runs out of money


class CountingUpstream:
    """The simulator, noting the ``x-fuzz-id`` of every POST that reaches it."""

    def __init__(self) -> None:
        self.app = create_app(SimulatorConfig())
        self.seen: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            fuzz_id = dict(scope["headers"]).get(b"x-fuzz-id", b"").decode()
            self.seen[fuzz_id] += 1
        await self.app(scope, receive, send)


class Target:
    def __init__(self, kp: Keyplane, upstream: CountingUpstream) -> None:
        self.kp = kp
        self.upstream = upstream
        self.client = httpx.Client(base_url=kp.server.url, timeout=30)
        self.request_ids: dict[str, str] = {}  # fuzz id -> keyplane's x-request-id
        self.sent: dict[str, tuple[str, int, bytes]] = {}  # x-request-id -> what and answer
        self.statuses: Counter[tuple[str, int]] = Counter()  # (path, status): what was reached

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, *,
        leave_after: int | None = None,
    ) -> httpx.Response:  # fmt: skip
        """``leave_after``: the client reads that many bytes of the answer, then disconnects."""
        fuzz_id = uuid.uuid4().hex
        h = {"content-type": "application/json", "x-fuzz-id": fuzz_id, **(headers or {})}
        h.setdefault("authorization", f"Bearer {self.kp.key}")
        if leave_after is None:
            resp = self.client.post(path, content=body, headers=h)
            resp.read()
        else:
            with (
                httpx.Client(base_url=self.kp.server.url, timeout=30) as once,
                once.stream("POST", path, content=body, headers=h) as resp,
            ):
                got = 0
                for chunk in resp.iter_raw(64):
                    got += len(chunk)
                    if got >= leave_after:
                        break
        self.statuses[path, resp.status_code] += 1
        self.request_ids[fuzz_id] = resp.headers.get("x-request-id", "")
        self.sent[self.request_ids[fuzz_id]] = (path, resp.status_code, body[:300])
        return resp

    def check_accounting(self) -> None:
        """Exactly one usage record per request that reached the upstream; none for the others;
        the ledger balanced and its spend the records' cost."""
        kp = self.kp
        kp.flush()
        records = kp.container.usage_store.query(kp.org.id, limit=10**9)
        by_id = Counter(r.request_id for r in records)
        assert all(n == 1 for n in by_id.values()), [i for i, n in by_id.items() if n > 1]
        reached = {self.request_ids[f] for f in self.upstream.seen if f in self.request_ids}
        missing = reached - set(by_id)
        extra = set(by_id) - reached
        assert not missing, [self.sent.get(m) for m in list(missing)[:5]]
        unmapped = [f for f in self.upstream.seen if f not in self.request_ids]
        detail = [(r.endpoint, r.status, r.outcome, r.cost_micro_usd) for r in records
                  if r.request_id in extra][:10]  # fmt: skip
        assert not extra, (len(extra), detail, len(unmapped), unmapped[:3])
        balance = kp.container.billing.balance(kp.org.id)
        assert balance.held == 0
        assert balance.spent == sum(r.cost_micro_usd for r in records)
        with kp.container.engine.connect() as conn:
            total = conn.execute(select(func.sum(ledger_entries.c.amount_micro))).scalar()
        assert (total or 0) == 0


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    upstream = CountingUpstream()
    sim = ServerThread(upstream).start()
    with contextlib.ExitStack() as stack:
        url = ""
        if os.environ.get("KEYPLANE_FUZZ_DB") == "postgresql":
            url = stack.enter_context(fresh_postgres())
        tmp: Path = tmp_path_factory.mktemp("fuzz")
        kp = start_keyplane(
            tmp, sim.url + "/v1", database_url=url, credit=CREDIT, max_body_bytes=256 * 1024
        )
        stack.callback(sim.stop)
        stack.callback(kp.container.close)
        stack.callback(kp.server.stop)
        t = Target(kp, upstream)
        yield t
        t.client.close()


def assert_clean(resp: httpx.Response) -> None:
    """A success, or a 4xx in OpenAI's envelope (the simulator is up: no 5xx is explained)."""
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
        assert {"message", "type", "param", "code"} <= set(error), error


# -- payloads -------------------------------------------------------------------------------

HUGE_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1, 0, 1]
ODD_FLOATS = [1e308, -1e308, 5e-324, -0.0, 0.5, 1.0, 128.0, 1e19]
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u2028\u2029",
    "\ufeff",
    "💥" * 50,
    "x" * 20_000,
    "gpt-4o-mini\x00",
    "gpt-4o-mini ",
    "../../etc/passwd",
    "%00",
    "\r\nx-injected: 1",
]


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from(HUGE_INTS)
    | st.integers()
    | st.sampled_from(ODD_FLOATS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(ODD_TEXT)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
) | st.sampled_from([nested(100), nested(256), [[]] * 2000, {"": {}}])

part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_image", "file", "input_file", "image",
                              "input_text", "input_audio", "refusal", "nope"]) | json_values},
    optional={
        "text": json_values,
        "image_url": json_values | st.fixed_dictionaries({"url": json_values}),
        "file": json_values,
        "file_id": json_values,
        "file_data": json_values,
        "image": json_values,
        "input_audio": json_values | st.fixed_dictionaries({"data": json_values}),
    },
)  # fmt: skip
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | json_values},
    optional={
        "content": json_values | st.lists(part, max_size=4),
        "tool_calls": json_values,
        "name": json_values,
        "type": json_values,
        "output": json_values | st.lists(part, max_size=3),
        "audio": json_values,
    },
)
messages = st.lists(message, max_size=5) | json_values

BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/moderations": {"input": "hi"},
    "/v1/images/generations": {"model": "dall-e-2", "prompt": "a cat"},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
    "/v1/audio/speech": {"model": "tts-1", "input": "hi", "voice": "alloy"},
}  # fmt: skip
MODELS = [
    "gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "dall-e-2",
    "dall-e-3", "gpt-image-1", "omni-moderation-latest", "tts-1", "whisper-1",
    "gpt-4o-transcribe", "o4-mini", "gpt-4o-audio-preview", "nope",
]  # fmt: skip
FIELDS: dict[str, Any] = {
    "model": st.sampled_from(MODELS) | json_values,
    "messages": messages,
    "input": messages | json_values | st.lists(st.integers() | st.text(max_size=5), max_size=5),
    "prompt": json_values | st.lists(st.lists(st.integers(), max_size=3), max_size=3),
    "n": st.sampled_from(HUGE_INTS) | json_values,
    "best_of": st.sampled_from(HUGE_INTS) | json_values,
    "max_tokens": st.sampled_from(HUGE_INTS + ODD_FLOATS) | json_values,
    "max_completion_tokens": st.sampled_from(HUGE_INTS + ODD_FLOATS) | json_values,
    "max_output_tokens": st.sampled_from(HUGE_INTS + ODD_FLOATS) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": json_values}) | json_values,
    "tools": st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "custom", "web_search"]) | json_values}
        ),
        max_size=3,
    )
    | json_values,
    "previous_response_id": json_values,
    "store": json_values,
    "background": json_values,
    "instructions": json_values,
    "quality": st.sampled_from(["standard", "hd", "low", "high", "auto"]) | json_values,
    "size": st.sampled_from(["1024x1024", "256x256", "auto", "1x1"]) | json_values,
    "response_format": json_values,
    "voice": json_values,
    "text": json_values,
    "conversation": json_values,
    "temperature": json_values,
    "logit_bias": json_values,
    "user": json_values,
    "modalities": st.lists(st.sampled_from(["text", "audio"]) | json_values, max_size=3)
    | json_values,
    "audio": json_values,
}


def raw_mutations(body: bytes) -> st.SearchStrategy[bytes]:
    """Byte-level variants of a JSON body: literals JSON lacks, lone surrogates, duplicate keys,
    invalid UTF-8, a BOM, truncation, trailing bytes."""
    inserts = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 400, b"0x10",
               b'"\\ud800"', b'"\\udfff"', b'"\\ud800\\u0041"', b'"\xff\xfe"', b'"\xed\xa0\x80"',
               b'"\xc0\xaf"', b"\"a\\u0000b\"", b"[" * 1100 + b"]" * 1100, b"01", b"+1", b"tru"]  # fmt: skip
    return st.one_of(
        st.tuples(st.sampled_from([b"max_tokens", b"n", b"model", b"input", b"stream"]),
                  st.sampled_from(inserts)).map(
            lambda kv: body[:-1] + b',"' + kv[0] + b'":' + kv[1] + b"}"
        ),
        st.sampled_from([b'"model":"gpt-4o"', b'"max_tokens":100000', b'"n":128',
                         b'"stream":true', b'"model":"nope"', b'"max_tokens":1']).map(
            lambda kv: b"{" + kv + b"," + body[1:]  # a duplicate key, before the real one
        ),
        st.just(b"\xef\xbb\xbf" + body),
        st.integers(0, max(len(body) - 1, 0)).map(lambda i: body[:i]),
        st.sampled_from([b" x", b"\x00", b"{}", b"\n\n"]).map(lambda t: body + t),
        st.tuples(st.integers(0, max(len(body) - 1, 0)), st.binary(min_size=1, max_size=3)).map(
            lambda ib: body[: ib[0]] + ib[1] + body[ib[0] :]
        ),
    )  # fmt: skip


def settings_() -> Any:
    return settings(
        max_examples=max(1, EXAMPLES),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- the tests ------------------------------------------------------------------------------


@settings_()
@given(path=st.sampled_from(sorted(BASES)), data=st.data())
def test_hostile_json_fields(target: Target, path: str, data: st.DataObject) -> None:
    """A valid request with one to three fields set to something odd, or dropped."""
    payload = dict(BASES[path])
    for name in data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3)):
        if data.draw(st.integers(0, 9)) == 0:
            payload.pop(name, None)
        else:
            payload[name] = data.draw(FIELDS[name], label=name)
    try:
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError:  # (an integer past 64 bits)
        body = json.dumps(payload).encode()
    leave = data.draw(st.none() | st.integers(0, 400), label="leave_after")
    resp = target.post(path, body, leave_after=leave)
    if leave is None:
        assert_clean(resp)
    else:  # (the answer was not read whole)
        assert resp.status_code < 500


@settings_()
@given(path=st.sampled_from(sorted(BASES)), data=st.data())
def test_hostile_json_bytes(target: Target, path: str, data: st.DataObject) -> None:
    body = data.draw(raw_mutations(orjson.dumps(BASES[path])))
    assert_clean(target.post(path, body))


# -- headers --------------------------------------------------------------------------------

TOKENS = [
    "", " ", "Bearer", "Bearer ", "Bearer  ", "bearer {k}", "BEARER {k}", "Bearer {k} extra",
    "Bearer  {k}", "Bearer\t{k}", "Basic {k}", "Bearer {k}\x00", "Bearer {k}\x7f", "Bearer é{k}",
    "Bearer {k}{k}", "Bearer " + "a" * 70_000, "Bearer sk-", "Bearer kp-", "Bearer {k}\xa0",
]  # fmt: skip


def raw_request(target: Target, fuzz_id: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Sends bytes as they are on a new connection; returns the status and body of the (final)
    answer, read as its head frames it; 0 when the connection closed without one."""
    with socket.create_connection(("127.0.0.1", target.kp.server.port), timeout=15) as sock:
        sock.sendall(head + body)
        data = b""

        def more() -> bool:
            nonlocal data
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return False
            data += chunk
            return bool(chunk)

        while True:
            while b"\r\n\r\n" not in data:
                if not more():
                    return 0, data
            if not data.startswith(b"HTTP/1."):
                return 0, data
            if data.split(b" ", 2)[1].startswith(b"1"):  # (100 Continue: the answer follows)
                data = data.partition(b"\r\n\r\n")[2]
                continue
            break
        status = int(data.split(b" ", 2)[1])
        head_, _, rest = data.partition(b"\r\n\r\n")
        fields = {}
        for line in head_.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"x-request-id" in fields:
            target.request_ids[fuzz_id] = fields[b"x-request-id"].decode()
        if head.startswith(b"HEAD ") or status in (204, 304):
            return status, b""
        if fields.get(b"transfer-encoding") == b"chunked":
            while not rest.endswith(b"0\r\n\r\n") and more():
                rest = data.partition(b"\r\n\r\n")[2]
            out = b""
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                out, rest = out + rest[:n], rest[n + 2 :]
                if not n:
                    break
            return status, out
        if b"content-length" in fields:
            while len(rest) < int(fields[b"content-length"]) and more():
                rest = data.partition(b"\r\n\r\n")[2]
            return status, rest
        while more():
            pass
        return status, data.partition(b"\r\n\r\n")[2]


header_names = st.sampled_from([
    b"authorization", b"content-type", b"content-length", b"transfer-encoding", b"expect",
    b"connection", b"x-forwarded-for", b"openai-organization", b"openai-project", b"host",
    b"content-encoding", b"accept-encoding", b"x-fuzz-extra", b"upgrade", b"te", b"trailer",
])  # fmt: skip
header_values = st.sampled_from([
    b"", b" ", b"chunked", b"gzip", b"100-continue", b"close", b"keep-alive, x-fuzz-extra",
    b"-1", b"99999999999999999999", b"1, 2", b"text/plain", b"multipart/form-data",
    b"application/json; charset=latin-1", b"\xff\xfe", b"a" * 9000, b"Bearer", b"upgrade",
    b"h2c", b"1.2.3.4, ::1, garbage", b"identity, chunked",
]) | st.binary(max_size=30)  # fmt: skip


@settings_()
@given(
    path=st.sampled_from([*sorted(BASES), "/v1/models", "/v1/models/gpt-4o", "/v1/audio/transcriptions",
                          "/v1/responses/resp_x", "/v1/responses/resp_x/input_items"]),
    method=st.sampled_from([b"POST", b"GET", b"DELETE", b"HEAD", b"OPTIONS", b"PUT"]),
    token=st.sampled_from(TOKENS),
    extra=st.lists(st.tuples(header_names, header_values), max_size=4),
    chunked=st.booleans(),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
)  # fmt: skip
def test_hostile_headers(
    target: Target, path: str, method: bytes, token: str, extra: Any, chunked: bool, version: bytes
) -> None:
    body = orjson.dumps(BASES.get(path, {"model": "gpt-4o-mini"}))
    fuzz_id = uuid.uuid4().hex
    lines = [
        method + b" " + path.encode() + b" " + version,
        b"host: kp",
        b"x-fuzz-id: " + fuzz_id.encode(),
    ]
    auth = token.replace("{k}", target.kp.key).encode("utf-8")
    if token:
        lines.append(b"authorization: " + auth)
    lines.append(b"content-type: application/json")
    for name, value in extra:  # (CR or LF would end the line: another request, not a header)
        lines.append(name + b": " + value.replace(b"\r", b"").replace(b"\n", b""))
    if chunked:
        lines.append(b"transfer-encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        lines.append(b"content-length: %d" % len(body))
        payload = body
    status, answer = raw_request(target, fuzz_id, b"\r\n".join(lines) + b"\r\n\r\n", payload)
    assert status < 500, (status, answer[:300])
    if status >= 400 and method != b"HEAD":
        error = orjson.loads(answer)["error"]
        assert {"message", "type", "param", "code"} <= set(error)


# -- multipart (speech to text, image edits and variations) -------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 99  # (the signature: the simulator reads no further)
form_names = st.sampled_from(["model", "file", "response_format", "stream", "prompt", "language",
                              "temperature", "timestamp_granularities[]", "", "fi\x00le", "image",
                              "image[]", "mask", "n", "size", "quality", "background"])  # fmt: skip
form_values = st.sampled_from([b"whisper-1", b"gpt-4o-transcribe", b"json", b"text", b"srt",
                               b"verbose_json", b"true", b"", b"\xff\xfe", b"x" * 300_000,
                               b"whisper-1\x00", b"  ", b"dall-e-2", b"gpt-image-1", b"1", b"10",
                               b"11", b"0", b"-1", b"\xd9\xa3", b"1e3", b"256x256", b"1024x1024",
                               b"auto", b"hd", b"b64_json", PNG + b"\x00" * 5000,
                               b"x" * (4 * 1024 * 1024)]) | st.binary(max_size=40)  # fmt: skip
UPLOADS = {  # a valid form of each upload endpoint, which the fuzz then adds to or replaces
    "/v1/audio/transcriptions": [(b"model", None, b"whisper-1"), (b"file", b"a.mp3", b"\0" * 1600)],
    "/v1/audio/translations": [(b"model", None, b"whisper-1"), (b"file", b"a.mp3", b"\0" * 1600)],
    "/v1/images/edits": [
        (b"prompt", None, b"a hat"),
        (b"image", b"a.png", PNG),
    ],
    "/v1/images/variations": [(b"image", b"a.png", PNG)],
}


@st.composite
def forms(draw: st.DrawFn, path: str) -> tuple[bytes, bytes]:
    boundary = b"b0undary"  # (mostly: a form that parses reaches the upstream)
    if draw(st.integers(0, 3)) == 0:
        boundary = draw(st.sampled_from([b"x" * 80, b"a b", b"", b'"q"', b"-" * 10]))
    parts: list[tuple[bytes, bytes | None, bytes]] = []
    if draw(st.integers(0, 3)):
        parts = list(UPLOADS[path])
    for name, value in draw(st.lists(st.tuples(form_names, form_values), max_size=3)):
        filename: bytes | None = draw(st.sampled_from([None, b"a.wav", b"", b"..\\x", b'"']))
        parts.append((name.encode("utf-8", "surrogatepass"), filename, value))
    body = b""
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary + b"\r\ncontent-disposition: " + disposition + b"\r\n\r\n"
        body += value + b"\r\n"
    ending = b"--" + boundary + b"--\r\n"
    if draw(st.integers(0, 3)) == 0:
        ending = draw(st.sampled_from([b"", b"--" + boundary, b"--"]))
    body += ending
    kind = b"multipart/form-data; boundary=" + boundary
    if draw(st.integers(0, 3)) == 0:
        kind = draw(
        st.sampled_from([b"multipart/form-data; boundary=" + boundary,
                         b'multipart/form-data; boundary="' + boundary + b'"',
                         b"multipart/form-data", b"application/json", b"multipart/mixed; boundary=" + boundary,
                         b"multipart/form-data; boundary=" + boundary + b"; boundary=zz"])
        )  # fmt: skip
    return kind, body


@settings_()
@given(path=st.sampled_from(sorted(UPLOADS)), data=st.data())
def test_hostile_multipart(target: Target, path: str, data: st.DataObject) -> None:
    kind, body = data.draw(forms(path), label="form")
    resp = target.post(path, body, {"content-type": kind.decode("latin-1")})
    assert_clean(resp)


def test_every_request_that_reached_the_upstream_is_metered_once(target: Target) -> None:
    """Runs last in this module (pytest keeps file order): the accounting of all the above."""
    print("\n".join(f"{p} {s}: {n}" for (p, s), n in sorted(target.statuses.items())))
    print(f"{sum(target.upstream.seen.values())} requests reached the upstream")
    target.check_accounting()
