"""Outgoing notifications: message texts (messages.py) and SMTP delivery (smtp.py).

Pure composition and transport only; which mail to send and when lives in orders/ (the outbox).
"""
