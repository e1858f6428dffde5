"""The Admin API (``/v1/organization``) and, later, the dashboard: a thin HTTP layer over the
domain services that the composition root hands in."""

from keyplane.web.admin import create_admin_app

__all__ = ["create_admin_app"]
