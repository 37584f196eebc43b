"""Scheduled table maintenance (compaction, vacuum, snapshot expiry)."""
