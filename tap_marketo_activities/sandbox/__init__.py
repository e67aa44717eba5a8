"""A fake Marketo REST/Bulk API for testing the tap; standard library only."""

from .core import Sandbox

__all__ = ["Sandbox"]
