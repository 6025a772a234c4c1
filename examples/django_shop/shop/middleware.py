"""A service the shop needs is down: answer 503 with a short message, and keep the details for the log.

Its databases (Django's ``OperationalError``/``InterfaceError``: PostgreSQL refused or dropped the connection) and
seqproc's services (``seqproc.ServiceUnavailable``: the broker, the result backend). The client learns that it may try
again, never a URL, a host or a driver's message; the log line has them (passwords masked by seqproc).
"""

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

import seqproc

logger = logging.getLogger(__name__)

#: What a client is told; the same for every service, whichever is down.
MESSAGE = "a service is unavailable; nothing was stored, try again later"


class ServiceUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError | seqproc.ServiceUnavailable):
            return None  # any other error is a bug: Django's 500
        logger.warning("%s %s: service unavailable: %s", request.method, request.path, exception)
        return JsonResponse({"error": MESSAGE}, status=503, headers={"Retry-After": "5"})
