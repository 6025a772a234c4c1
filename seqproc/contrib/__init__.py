"""Integrations with frameworks, each in a subpackage that imports its framework only when used
(``seqproc.contrib.django``)."""

__all__: list[str] = []
