"""httpx's calls and clients for tests, with the tests' timeout: ``kphttp.post(url, ...)``,
``kphttp.Client(base_url=...)`` as with httpx.

httpx gives up after 5 s by default. On a loaded machine (a CI runner with a load average of 10
and more) a keyplane's first Admin API call, which builds its FastAPI app, or a dashboard page can
take longer, and a test failed for a wait no user would notice. Every test's HTTP call waits up to
``TIMEOUT`` instead; a real hang still fails, later. A test about how long something takes (a
deadline, a timeout of keyplane's) says so with its own ``timeout=``, which wins over this one.
(Calls through ``httpx.ASGITransport`` have no timeout at all: nothing to set there.)"""

from __future__ import annotations

import functools

import httpx

TIMEOUT = 30.0  # seconds, for each of connecting, writing, reading and waiting for a connection

request = functools.partial(httpx.request, timeout=TIMEOUT)
get = functools.partial(httpx.get, timeout=TIMEOUT)
post = functools.partial(httpx.post, timeout=TIMEOUT)
delete = functools.partial(httpx.delete, timeout=TIMEOUT)
stream = functools.partial(httpx.stream, timeout=TIMEOUT)
Client = functools.partial(httpx.Client, timeout=TIMEOUT)
AsyncClient = functools.partial(httpx.AsyncClient, timeout=TIMEOUT)
