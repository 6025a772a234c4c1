"""gunicorn's settings for the example, read from the folder it starts in: the application is loaded once, before
the workers fork (seqproc's event schemas with it), and each worker opens its broker connection as it starts, so
that its first request costs what the others do."""

preload_app = True


def post_fork(server, worker):  # gunicorn's hook signature
    import seqproc

    try:
        seqproc.connect()
    except seqproc.PublishError as error:  # not fatal: the first call connects, or says why it cannot
        server.log.warning("seqproc: %s", error)
