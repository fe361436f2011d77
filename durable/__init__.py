"""Durable file writes every package may use (standard library only): atomic replace, file and folder fsync."""
