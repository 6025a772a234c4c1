"""The contract shared by the producer and the worker; no process state.

- :mod:`.errors`: the :class:`SeqprocError` tree; :mod:`.settings`: the typed ``SEQPROC_*`` settings;
- :mod:`.events`: the event schemas; :mod:`.outcomes`: outcomes and where they are kept;
- :mod:`.wire`: routing, queue names, the task name, every Redis key and prefix;
- :mod:`.celery`: the Celery settings; :mod:`.transport`: seqproc's Redis transport for kombu;
- :mod:`.tables`: the tables (SQLAlchemy 2); :mod:`.db`: engines; :mod:`.clients`: Redis clients.

Nothing here is imported eagerly, and a producer (``import seqproc``, then its calls) loads neither the tables
(:mod:`.tables`) nor SQLAlchemy: the built-in domains' SQL (``seqproc.domains.*_store``) loads with a worker's first
batch. ``tests/unit/test_layering.py`` holds this, and that nothing here imports ``worker`` or ``seqproc.domains``.
"""
