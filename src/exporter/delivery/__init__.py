"""Delivery: how a finished export file reaches its owner.

``base.py`` is the seam: the ``Channel`` protocol, the file it is handed and the receipt it
returns, and the ``DeliveryGuard`` the run lends it. ``email.py`` is today's channel (the
file attached, or uploaded to S3 and linked); ``channels.py`` picks the channel for a job;
``notice.py`` tells the owner that an export failed. A new channel (say, a webhook) is one
new module here implementing ``Channel``, its settings, and a line in ``channels.py``.
"""
