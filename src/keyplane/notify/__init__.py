"""Notifications: an email outbox (enqueue once per dedupe key, deliver with retries) and the
SMTP mailer. The delivery guarantee is written down in ``dispatcher.py``."""
