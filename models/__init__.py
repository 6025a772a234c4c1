"""The contract shared by the producer and the worker; no process state.

- :mod:`.errors`: the :class:`SeqprocError` tree; :mod:`.settings`: the typed ``SEQPROC_*`` settings;
- :mod:`.events`: the event schemas; :mod:`.outcomes`: outcomes and where they are kept;
- :mod:`.wire`: routing, queue names, the task name, every Redis key and prefix;
- :mod:`.celery`: the Celery settings; :mod:`.transport`: seqproc's Redis transport for kombu;
- :mod:`.tables`: the tables (SQLAlchemy 2); :mod:`.db`: engines; :mod:`.clients`: Redis clients.

Nothing here is imported eagerly: a producer that needs the events does not load the tables.
"""
