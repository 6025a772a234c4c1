"""gunicorn's settings for the example, read from the folder it starts in: the application is loaded once, before
the workers fork (seqproc's event schemas with it), and each worker opens its broker connection as it starts, so
that its first request costs what the others do."""

import threading

preload_app = True


def post_worker_init(worker):  # gunicorn's hook: in the worker, once it is set up (gevent's patching included)
    import seqproc

    def connect() -> None:
        try:
            seqproc.connect()
        except seqproc.PublishError as error:  # not fatal: the first call connects, or says why it cannot
            worker.log.warning("seqproc: %s", error)

    # In the background: a broker that does not answer must not hold up the worker's start (a request meanwhile
    # connects, or waits for this connection, as it would without the hook).
    threading.Thread(target=connect, name="seqproc-connect", daemon=True).start()
