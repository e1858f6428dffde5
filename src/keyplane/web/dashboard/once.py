"""One-time form ids: a form that creates something and shows its secret once (an API key, a
webhook's signing secret) carries a random ``form_id``, so that sending it again (a reload of the
page showing the secret, say) makes no second one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager


class OnceForms:
    """The ids of the forms sent, in memory: the newest ``MAX`` (a form is sent within minutes of
    being shown)."""

    MAX = 10_000

    def __init__(self) -> None:
        self._used: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, form_id: str) -> bool:
        """Whether ``form_id`` is a form's id never sent before (it is taken now)."""
        if len(form_id) < 16:
            return False
        with self._lock:
            if form_id in self._used:
                return False
            self._used[form_id] = None
            while len(self._used) > self.MAX:
                self._used.popitem(last=False)
            return True

    def seen(self, form_id: str) -> bool:
        """Whether ``form_id`` was claimed already (and not given back)."""
        with self._lock:
            return form_id in self._used

    def release(self, form_id: str) -> None:
        """Gives the id back (what the form asked for was not made: it may be sent again)."""
        with self._lock:
            self._used.pop(form_id, None)

    @contextmanager
    def taking(self, form_id: str) -> Iterator[None]:
        """Around making what a claimed form asked for: gives ``form_id`` back if that raises
        (nothing was made: the form may be sent again)."""
        try:
            yield
        except BaseException:
            self.release(form_id)
            raise
