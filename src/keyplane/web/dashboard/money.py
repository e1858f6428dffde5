"""Money as the dashboard's pages show it, one rule everywhere (registered as template globals in
``app.py``): dollars and cents, like OpenAI's pages.

- ``usd``: an amount as it was set or charged (a budget, a threshold, a purchase): whole cents, so
  two decimals (more only if an operator set it finer, which the figure then says).
- ``usd_left``, ``money_left``: money there is (a balance, credit left, what was paid): rounded
  down to the cent, never showing more than there is.
- ``usd_spent``, ``money_spent``: money spent or held: rounded up, never showing less.
- ``usd_cost``: a usage figure: cents, or every digit under a cent (a request of a few tokens).

The ``money_`` ones are HTML with the dollar sign: a rounded figure carries the exact one, to the
micro-dollar, in its tooltip. The ``usd`` ones are text without it (for attributes and notices)."""

from __future__ import annotations

from markupsafe import Markup

from keyplane.usage.pricing import format_cents, format_cost, format_usd


def usd_left(micros: int) -> str:
    return format_cents(micros)


def usd_spent(micros: int) -> str:
    return format_cents(micros, up=True)


def _shown(shown: str, micros: int) -> Markup:
    exact = format_usd(micros)
    if shown == exact:
        return Markup("${}").format(shown)
    return Markup('<span class="money" title="Exactly ${}">${}</span>').format(exact, shown)


def money_left(micros: int) -> Markup:
    return _shown(usd_left(micros), micros)


def money_spent(micros: int) -> Markup:
    return _shown(usd_spent(micros), micros)


GLOBALS = {
    "usd": format_usd,
    "usd_left": usd_left,
    "usd_spent": usd_spent,
    "usd_cost": format_cost,
    "money_left": money_left,
    "money_spent": money_spent,
}
