"""The SDK's feedback module: where ``GreengrassFeedbackException`` lives."""

from serve_app.client import FeedbackClient, GreengrassFeedbackException

__all__ = ["FeedbackClient", "GreengrassFeedbackException"]
