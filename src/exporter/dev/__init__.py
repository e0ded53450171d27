"""Local stand-ins for AWS services (DynamoDB Local, an SMTP sink), for `make run` and tests.

Nothing here is used in production; it needs the ``dev`` extra (aiosmtpd, moto).
"""
