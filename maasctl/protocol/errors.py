"""Errors that carry their HTTP status; the REST layer maps them to `{"error": message}` in one place."""

from __future__ import annotations


class InferenceError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferenceError):
    status = 400


class NotFound(InferenceError):
    status = 404


class PayloadTooLarge(InferenceError):
    status = 413


class NotReady(InferenceError):
    status = 503
