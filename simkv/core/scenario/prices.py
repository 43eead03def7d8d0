"""The S3 storage classes the archive tier prices: list prices and billing minimums."""

from __future__ import annotations

__all__ = ["RESTORE_CLASSES", "SECONDS_PER_DAY", "STORAGE_CLASSES"]

# Documented defaults per S3 storage class (USD, S3 us-east-1 list prices, 2025): per GB-month
# stored, per PUT (or COPY), per GET, per GB retrieved; and the billing minimums: ``min_days``
# (an object deleted or overwritten earlier is charged the rest: S3's early-deletion fee) and
# ``min_object_bytes`` (a smaller object is billed as this size). Glacier Flexible Retrieval
# and Deep Archive are priced for a Standard restore (its per-request fee is added to ``get``),
# which takes hours: they need ``request_latency_s`` set to the restore time. Their 40 KB of
# per-object metadata is not billed.
STORAGE_CLASSES: dict[str, dict[str, float]] = {
    "standard": {"gb_month": 0.023, "put": 0.005 / 1000, "get": 0.0004 / 1000, "retrieval_gb": 0.0,
                 "min_days": 0.0, "min_object_bytes": 0},
    "standard_ia": {"gb_month": 0.0125, "put": 0.01 / 1000, "get": 0.001 / 1000, "retrieval_gb": 0.01,
                    "min_days": 30.0, "min_object_bytes": 128 * 1024},
    "glacier_ir": {"gb_month": 0.004, "put": 0.02 / 1000, "get": 0.01 / 1000, "retrieval_gb": 0.03,
                   "min_days": 90.0, "min_object_bytes": 128 * 1024},
    "glacier_flexible": {"gb_month": 0.0036, "put": 0.03 / 1000, "get": (0.05 + 0.0004) / 1000,
                         "retrieval_gb": 0.01, "min_days": 90.0, "min_object_bytes": 0},
    "deep_archive": {"gb_month": 0.00099, "put": 0.05 / 1000, "get": (0.10 + 0.0004) / 1000,
                     "retrieval_gb": 0.02, "min_days": 180.0, "min_object_bytes": 0},
}
#: Classes whose objects must be restored before a GET (minutes to hours).
RESTORE_CLASSES = ("glacier_flexible", "deep_archive")
SECONDS_PER_DAY = 86400.0
