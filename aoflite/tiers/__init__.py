"""Tiers beyond the local segments directory: the compressed local copy
(Tier 1, ``seekable``) and what builds on it."""
