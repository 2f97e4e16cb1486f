"""Notifications to the owner: signed webhooks and alert mails, sent from the worker process."""
