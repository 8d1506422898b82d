"""Exit and revive events: the outbox, callback delivery, the event feed.

Imports only ``overcast.model`` and ``overcast.store``.
"""
