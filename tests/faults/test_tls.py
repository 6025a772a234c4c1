"""A TLS broker (``rediss://``) gets seqproc's Redis transport, as ``redis://`` does: the SIGKILL fault test passes on
a redis-server that speaks TLS only, with certificates made here. Bounded: 8 kills, well under a minute."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from seqproc import producer
from seqproc.models.scripts import FETCH_AND_HOLD
from seqproc.models.settings import Settings
from seqproc.models.transport import TRANSPORT, Transport
from seqproc.models.wire import BELL_PREFIX, bell_key
from seqproc.producer.publish import client_app
from tests.conftest import PrivateRedis, TlsFiles, require, require_tools, reset_state, wait_for
from tests.faults.landing import unacked_count
from tests.faults.test_kill import sigkills_mid_stream

pytestmark = pytest.mark.services

KILLS = 8

#: The server certificate's extensions: for 127.0.0.1 and localhost (as subject alternative names, which is what
#: clients check), a TLS server's, with the key identifiers strict verifiers ask for.
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_certificates(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate it signed, valid for two days, made with the ``openssl`` CLI."""
    directory.mkdir()
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"  # EC keys: made in milliseconds
    ca_extensions = "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    for command in (
        f"req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=seqproc-test-CA {ca_extensions}",
        f"req -new {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem",
        "verify -CAfile ca.pem server.pem",
    ):
        done = subprocess.run(
            ["openssl", *command.split()], cwd=directory, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"openssl {command} failed:\n{done.stderr}"
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own that speaks TLS only (``--port 0``), on a loopback port."""
    require_tools("openssl", "redis-server")
    server = PrivateRedis(tmp_path / "redis", persistent=False, tls=make_certificates(tmp_path / "tls"))
    server.directory.mkdir()
    try:
        server.start()
    except AssertionError:
        if server.process is None or server.process.poll() is None:
            raise
        require(False, "a redis-server with TLS (--tls-port)")  # it exited: built without TLS
    yield server
    server.stop()


def test_sigkills_on_a_tls_broker_lose_and_double_nothing(
    clean: Settings, tls_redis: PrivateRedis, start_worker, engine: Engine, tmp_path: Path
) -> None:
    settings = clean.model_copy(update={"broker_url": tls_redis.url(0), "result_backend": tls_redis.url(1)})
    assert settings.broker_url.startswith("rediss://127.0.0.1:")
    assert tls_redis.tls is not None
    broker = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=10)
    assert broker.ping()

    # Really TLS: the port speaks nothing else, and the server's certificate is checked (the system's CAs, without
    # the test's CA, do not vouch for it).
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_connect_timeout=2, socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(f"rediss://127.0.0.1:{tls_redis.port}/0", socket_connect_timeout=2).ping()

    # Producers and workers configure seqproc's transport for it, with a TLS connection to Redis.
    with client_app(settings).connection_for_read() as conn:
        assert type(conn.transport) is Transport
        assert issubclass(conn.default_channel._connparams()["connection_class"], redis.SSLConnection)

    # Only seqproc's transport runs the fetch script (kombu's stock one pops with BRPOP): not yet loaded here.
    fetch_sha = hashlib.sha1(FETCH_AND_HOLD.encode()).hexdigest()  # Redis names scripts by their SHA-1
    assert broker.script_exists(fetch_sha) == [False]
    # The producer pushes each message itself over TLS, and rings its queue's bell with it (no worker yet). Then
    # everything is cleared again for the fault run.
    producer.configure(settings)
    probe = producer.like(1, 1)
    assert (broker.llen(probe.queue), broker.llen(bell_key(probe.queue))) == (1, 1)
    reset_state(engine, settings)

    sigkills_mid_stream(
        settings,
        start_worker,
        engine,
        kills=KILLS,
        fault="worker SIGKILL mid-stream, TLS broker (rediss://)",
        min_events=100 * KILLS,
        min_sequenced=10 * KILLS,
    )

    # Every worker connected with seqproc's transport, fetched with its script on the TLS server and waited on the
    # bells that the producer rang with each message (the stock transport would leave every bell rung, unread).
    logs = [path.read_text(errors="replace") for path in sorted(tmp_path.glob("worker-*.log"))]
    assert len(logs) == KILLS + 1
    assert all(f"Connected to {TRANSPORT}://" in log for log in logs)
    assert broker.script_exists(fetch_sha) == [True]
    wait_for(lambda: not broker.keys(f"{BELL_PREFIX}*"), 15, "the worker to consume every bell")
    wait_for(lambda: unacked_count(broker) == 0, 30, "every message acked")
