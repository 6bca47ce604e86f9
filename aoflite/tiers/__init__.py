"""Tiers below the local segment files: compression and object-store backends."""
