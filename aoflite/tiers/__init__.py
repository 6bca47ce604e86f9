"""Tiers below the local segment files: Tier 1, the compressed local copy
(``seekable``), and Tier 2, object stores behind one small interface
(``base``, with ``local`` for file:// and ``s3`` for S3/MinIO)."""
