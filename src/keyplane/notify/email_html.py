"""The HTML part of keyplane's emails, rendered from Jinja2 templates (``notify/templates/``).

Every email keyplane sends is ``multipart/alternative``: the plain text its sender writes, and this
HTML saying the same on one shared layout (``base.html``: the product name, a heading, the body, a
button for the email's main link, a footer saying why the reader got it). Mail clients show the
HTML and fall back to the text. The HTML is made for them: tables and inline styles (many clients
drop ``<style>`` and ignore flexbox), no remote images (blocked by default, and a tracking pixel
in all but name) and no scripts (never run).

Autoescaping is always on: organization, project and key names are typed by people, and an
organization named ``<script>…`` must arrive as those characters, not as markup."""

from __future__ import annotations

import functools

from jinja2 import Environment, PackageLoader, StrictUndefined


@functools.cache
def _environment() -> Environment:
    # Built on first use, once per process: the templates are package data that never change
    # while it runs (as ``accounts.signup.common_passwords`` reads its list).
    return Environment(
        loader=PackageLoader("keyplane.notify", "templates"),
        autoescape=True,  # whatever the template's name: every value is escaped
        undefined=StrictUndefined,  # a misspelled variable fails the test, not the email
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(template: str, *, subject: str, **context: object) -> str:
    """Returns the HTML part of an email: ``template`` (a file in ``notify/templates/``, on
    ``base.html``) with ``context``, every value escaped. ``subject`` is the email's, for the
    document's title.

    Raises jinja2.TemplateError for a missing template or variable (a bug, found by the tests)."""
    return _environment().get_template(template).render(subject=subject, **context)
