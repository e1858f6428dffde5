"""The dashboard: server-rendered pages for people (sign-up, sign-in, and the pages to come)."""

from keyplane.web.dashboard.app import create_dashboard_app

__all__ = ["create_dashboard_app"]
