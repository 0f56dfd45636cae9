"""Conversation storage."""
